// Finite groups as multiplication tables: table[a·|G| + b] = a·b for S_n, A_n, Z_n and direct products.
//
// Permutations are 0-based arrays p[0..n) here and printed 1-based; (a·b)[i] = a[b[i]]. An element's
// index is its lexicographic rank among the permutations (S_n) or among the even ones (A_n).
#include "fprnn/tasks/groups.h"

#include <c10/util/Exception.h>

#include <algorithm>
#include <cctype>
#include <numeric>

namespace fprnn::tasks {
namespace {

constexpr int64_t kMaxPermutationDegree = 7;  // |S_7| = 5040 = Group::kMaxOrder

const char* const kAcceptedForms =
    "expected S<n> or A<n> (1 ≤ n ≤ 7), Z<n> (1 ≤ n ≤ 5040), or a direct product such as A4_x_Z5 "
    "(also A4xZ5, any number of factors) of order ≤ 5040";

int64_t factorial(int64_t n) {
  int64_t f = 1;
  for (int64_t i = 2; i <= n; ++i) f *= i;
  return f;
}

bool is_even(const int8_t* p, int64_t n) {
  int64_t inversions = 0;
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = i + 1; j < n; ++j) inversions += p[j] < p[i];
  return inversions % 2 == 0;
}

std::string one_line_name(const int8_t* p, int64_t n) {
  std::string s = "(";
  for (int64_t i = 0; i < n; ++i) {
    if (i > 0) s += ' ';
    s += std::to_string(p[i] + 1);
  }
  return s + ")";
}

// S_n (even_only = false) or A_n (even_only = true).
Group permutation_group(int64_t n, bool even_only) {
  // All permutations in lexicographic order (next_permutation from the identity), flat (n! × n).
  const int64_t n_all = factorial(n);
  std::vector<int8_t> all(n_all * n);
  std::vector<int8_t> p(n);
  std::iota(p.begin(), p.end(), int8_t{0});
  for (int64_t r = 0; r < n_all; ++r) {
    std::copy(p.begin(), p.end(), all.begin() + r * n);
    std::next_permutation(p.begin(), p.end());
  }

  // A permutation's code packs p[i] into bits 3i..3i+2 (n ≤ 7 ⇒ < 2^21); index_of[code] = its index in
  // the group. Odd permutations of A_n, and codes that are not permutations, stay −1.
  std::vector<int32_t> index_of(int64_t{1} << (3 * n), -1);
  std::vector<int64_t> members;
  for (int64_t r = 0; r < n_all; ++r) {
    const int8_t* p_r = &all[r * n];
    if (even_only && !is_even(p_r, n)) continue;
    int64_t code = 0;
    for (int64_t i = 0; i < n; ++i) code |= int64_t{p_r[i]} << (3 * i);
    index_of[code] = static_cast<int32_t>(members.size());
    members.push_back(r);
  }

  // table[a, b] = index of a∘b, (a∘b)[i] = a[b[i]]: 7 lookups per entry, 25 M entries for S_7.
  const int64_t order = static_cast<int64_t>(members.size());
  std::vector<int32_t> table(order * order);
  for (int64_t a = 0; a < order; ++a) {
    const int8_t* pa = &all[members[a] * n];
    for (int64_t b = 0; b < order; ++b) {
      const int8_t* pb = &all[members[b] * n];
      int64_t code = 0;
      for (int64_t i = 0; i < n; ++i) code |= int64_t{pa[pb[i]]} << (3 * i);
      table[a * order + b] = index_of[code];
    }
  }

  std::vector<std::string> names(order);
  for (int64_t a = 0; a < order; ++a) names[a] = one_line_name(&all[members[a] * n], n);
  return Group((even_only ? "A" : "S") + std::to_string(n), order, std::move(table), std::move(names));
}

Group cyclic_group(int64_t n) {
  std::vector<int32_t> table(n * n);
  for (int64_t a = 0; a < n; ++a)
    for (int64_t b = 0; b < n; ++b) table[a * n + b] = static_cast<int32_t>(a + b < n ? a + b : a + b - n);
  std::vector<std::string> names(n);
  for (int64_t a = 0; a < n; ++a) names[a] = std::to_string(a);
  return Group("Z" + std::to_string(n), n, std::move(table), std::move(names));
}

// One factor of a group name: kind ∈ {S, A, Z} and its parameter n.
struct Factor {
  char kind;
  int64_t n;
  int64_t order() const {
    if (kind == 'Z') return n;
    return kind == 'S' ? factorial(n) : std::max<int64_t>(1, factorial(n) / 2);
  }
};

// Splits "S3_x_Z2xA4" into factors; returns false on any syntax error or out-of-range n.
bool parse_factors(const std::string& name, std::vector<Factor>& factors) {
  size_t pos = 0;
  while (true) {
    if (pos >= name.size()) return false;
    const char kind = static_cast<char>(std::toupper(static_cast<unsigned char>(name[pos])));
    if (kind != 'S' && kind != 'A' && kind != 'Z') return false;
    ++pos;
    const size_t digits_begin = pos;
    while (pos < name.size() && std::isdigit(static_cast<unsigned char>(name[pos]))) ++pos;
    const size_t n_digits = pos - digits_begin;
    if (n_digits == 0 || n_digits > 9) return false;
    const int64_t n = std::stoll(name.substr(digits_begin, n_digits));
    if (n < 1) return false;
    if (kind != 'Z' && n > kMaxPermutationDegree) return false;
    if (kind == 'Z' && n > Group::kMaxOrder) return false;
    factors.push_back({kind, n});
    if (pos == name.size()) return true;
    if (name.compare(pos, 3, "_x_") == 0) {
      pos += 3;
    } else if (name[pos] == 'x') {
      pos += 1;
    } else {
      return false;
    }
  }
}

}  // namespace

Group::Group(std::string name, int64_t order, std::vector<int32_t> table, std::vector<std::string> element_names)
    : name_(std::move(name)), order_(order), table_(std::move(table)), element_names_(std::move(element_names)) {
  TORCH_CHECK(order_ >= 1 && order_ <= kMaxOrder, "group ", name_, ": order must be in 1..", kMaxOrder, ", got ",
              order_);
  TORCH_CHECK(static_cast<int64_t>(table_.size()) == order_ * order_, "group ", name_, ": table must have order² = ",
              order_ * order_, " entries, got ", table_.size());
  TORCH_CHECK(static_cast<int64_t>(element_names_.size()) == order_, "group ", name_, ": expected ", order_,
              " element names, got ", element_names_.size());
  for (int64_t a = 0; a < order_; ++a)
    TORCH_CHECK(table_[a] == a && table_[a * order_] == a, "group ", name_,
                ": element 0 must be the identity (row 0 and column 0 of the table)");
  // Every row and every column a permutation of 0..order−1 (a Latin square); then a·b = 0 has exactly one
  // solution b per a, the inverse. Associativity is not checked here (O(order³)); the tests check it.
  // One row-major pass: row_seen[c] = last row holding c; col_seen has bit c·order + b once c is in column b.
  std::vector<int64_t> row_seen(order_, -1);
  std::vector<uint64_t> col_seen((order_ * order_ + 63) / 64, 0);
  inverse_.assign(order_, -1);
  for (int64_t a = 0; a < order_; ++a) {
    for (int64_t b = 0; b < order_; ++b) {
      const int32_t c = table_[a * order_ + b];
      TORCH_CHECK(c >= 0 && c < order_, "group ", name_, ": table entry (", a, ", ", b, ") = ", c,
                  " is outside 0..", order_ - 1);
      TORCH_CHECK(row_seen[c] != a, "group ", name_, ": row ", a, " of the table repeats element ", c,
                  " (not a group)");
      row_seen[c] = a;
      const int64_t bit = c * order_ + b;
      TORCH_CHECK(!(col_seen[bit / 64] >> (bit % 64) & 1), "group ", name_, ": column ", b,
                  " of the table repeats element ", c, " (not a group)");
      col_seen[bit / 64] |= uint64_t{1} << (bit % 64);
      if (c == 0) inverse_[a] = static_cast<int32_t>(b);
    }
  }
  for (int64_t a = 0; a < order_; ++a)
    TORCH_CHECK(table_[inverse_[a] * order_ + a] == 0, "group ", name_, ": element ", a,
                " has a right inverse that is not a left inverse (not a group)");
}

Group Group::from_name(const std::string& name) {
  std::vector<Factor> factors;
  TORCH_CHECK(parse_factors(name, factors), "group: unknown group '", name, "'; ", kAcceptedForms);
  int64_t order = 1;
  for (const Factor& f : factors) {
    order *= f.order();  // each factor ≤ kMaxOrder, so no overflow before the check below
    TORCH_CHECK(order <= kMaxOrder, "group: '", name, "' has more than ", kMaxOrder,
                " elements (the multiplication table is order² int32); ", kAcceptedForms);
  }
  std::vector<Group> groups;
  for (const Factor& f : factors)
    groups.push_back(f.kind == 'Z' ? cyclic_group(f.n) : permutation_group(f.n, f.kind == 'A'));
  if (groups.size() == 1) return std::move(groups.front());
  return direct_product(groups);
}

bool Group::is_abelian() const {
  // Compares the table with its transpose in 64 × 64 tiles (the column reads stay in cache).
  constexpr int64_t kTile = 64;
  for (int64_t a0 = 0; a0 < order_; a0 += kTile)
    for (int64_t b0 = a0; b0 < order_; b0 += kTile)
      for (int64_t a = a0; a < std::min(a0 + kTile, order_); ++a)
        for (int64_t b = std::max(b0, a + 1); b < std::min(b0 + kTile, order_); ++b)
          if (table_[a * order_ + b] != table_[b * order_ + a]) return false;
  return true;
}

std::string Group::element_name(int64_t a) const {
  TORCH_CHECK(a >= 0 && a < order_, "group ", name_, ": element ", a, " is outside 0..", order_ - 1);
  return element_names_[a];
}

Group direct_product(const Group& a, const Group& b) { return direct_product(std::vector<Group>{a, b}); }

Group direct_product(const std::vector<Group>& factors) {
  TORCH_CHECK(!factors.empty(), "direct_product: needs at least one factor");
  int64_t order = 1;
  std::string name;
  for (const Group& g : factors) {
    order *= g.order();
    TORCH_CHECK(order <= Group::kMaxOrder, "direct_product: the product has more than ", Group::kMaxOrder,
                " elements");
    name += (name.empty() ? "" : "_x_") + g.name();
  }
  // Element x ↔ tuple (x_1..x_m) in mixed radix, last factor fastest: x = (…(x_1·|G_2| + x_2)…)·|G_m| + x_m.
  const int64_t m = static_cast<int64_t>(factors.size());
  std::vector<int64_t> digits(order * m);
  for (int64_t x = 0; x < order; ++x) {
    int64_t rest = x;
    for (int64_t f = m - 1; f >= 0; --f) {
      digits[x * m + f] = rest % factors[f].order();
      rest /= factors[f].order();
    }
  }
  std::vector<int32_t> table(order * order);
  for (int64_t x = 0; x < order; ++x) {
    for (int64_t y = 0; y < order; ++y) {
      int64_t z = 0;
      for (int64_t f = 0; f < m; ++f)
        z = z * factors[f].order() + factors[f].mul(digits[x * m + f], digits[y * m + f]);
      table[x * order + y] = static_cast<int32_t>(z);
    }
  }
  std::vector<std::string> names(order);
  for (int64_t x = 0; x < order; ++x) {
    std::string s = "(";
    for (int64_t f = 0; f < m; ++f) s += (f > 0 ? ", " : "") + factors[f].element_name(digits[x * m + f]);
    names[x] = s + ")";
  }
  return Group(name, order, std::move(table), std::move(names));
}

}  // namespace fprnn::tasks
