// Finite groups for the word problems (spec §12.1): S_n, A_n, Z_n and direct products, as a
// multiplication table over element indices.
//
// Element order: S_n lists the permutations of (1..n) in lexicographic order (index 0 = identity); A_n
// keeps the even permutations in S_n's order; Z_n is 0..n−1 under addition; G1×G2 lists pairs (g1, g2) in
// lexicographic order, index i1·|G2| + i2. The product of permutations is composition,
// (a·b)(i) = a(b(i)); of pairs, componentwise.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace fprnn::tasks {

class Group {
 public:
  // Largest order accepted (|S_7|): the table is order² int32, at most 5040² · 4 B ≈ 97 MiB.
  static constexpr int64_t kMaxOrder = 5040;

  // Parses "S5", "A4", "Z60", "A4_x_Z5" (also "A4xZ5", "S3_x_Z2_x_Z2"): S_n and A_n for n ≤ 7, Z_n and
  // products up to kMaxOrder elements; the letter may be lower case. name() is the canonical spelling
  // ("A4_x_Z5"). Unknown or too large names throw one clear line.
  static Group from_name(const std::string& name);

  const std::string& name() const { return name_; }
  int64_t order() const { return order_; }
  int64_t identity() const { return 0; }
  // a·b as an element index.
  int64_t mul(int64_t a, int64_t b) const { return table_[a * order_ + b]; }
  int64_t inverse(int64_t a) const { return inverse_[a]; }
  bool is_abelian() const;
  // Human-readable element (e.g. "(2 1 3)" for a permutation in one-line notation, "3" for Z_n).
  std::string element_name(int64_t a) const;

  // From a table (row a, column b → a·b). Checks the size, that 0 is the identity and that every row and
  // column is a permutation (not associativity, which is O(order³)); throws otherwise.
  Group(std::string name, int64_t order, std::vector<int32_t> table, std::vector<std::string> element_names);

 private:
  std::string name_;
  int64_t order_;
  std::vector<int32_t> table_;     // order × order, row a, column b → a·b
  std::vector<int32_t> inverse_;
  std::vector<std::string> element_names_;
};

// The direct product G1 × G2 with the element order above.
Group direct_product(const Group& a, const Group& b);
// G1 × … × Gm with tuples in lexicographic order (last factor fastest) and flat tuple names "(x1, …, xm)".
Group direct_product(const std::vector<Group>& factors);

}  // namespace fprnn::tasks
