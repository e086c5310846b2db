// Tests of the finite groups: orders, group axioms, element order, composition convention, products, names.
#include "fprnn/tasks/groups.h"
#include "testing.h"

#include <algorithm>
#include <map>
#include <numeric>
#include <random>

namespace fprnn::tasks {
namespace {

// Permutations of 0..n−1 in lexicographic order, from std::next_permutation (independent of the library).
std::vector<std::vector<int>> lexicographic_permutations(int n) {
  std::vector<std::vector<int>> all;
  std::vector<int> p(n);
  std::iota(p.begin(), p.end(), 0);
  do all.push_back(p);
  while (std::next_permutation(p.begin(), p.end()));
  return all;
}

bool even(const std::vector<int>& p) {
  int inversions = 0;
  for (size_t i = 0; i < p.size(); ++i)
    for (size_t j = i + 1; j < p.size(); ++j) inversions += p[j] < p[i];
  return inversions % 2 == 0;
}

std::string one_line(const std::vector<int>& p) {
  std::string s = "(";
  for (size_t i = 0; i < p.size(); ++i) s += (i ? " " : "") + std::to_string(p[i] + 1);
  return s + ")";
}

// (a·b)(i) = a(b(i)).
std::vector<int> compose(const std::vector<int>& a, const std::vector<int>& b) {
  std::vector<int> c(a.size());
  for (size_t i = 0; i < a.size(); ++i) c[i] = a[b[i]];
  return c;
}

// Identity at 0 (two-sided), closure, inverses (two-sided) and, exhaustively, associativity.
void expect_group_axioms(const Group& g) {
  const int64_t n = g.order();
  for (int64_t a = 0; a < n; ++a) {
    ASSERT_EQ(g.mul(0, a), a) << g.name() << ": 0·" << a;
    ASSERT_EQ(g.mul(a, 0), a) << g.name() << ": " << a << "·0";
    ASSERT_EQ(g.mul(a, g.inverse(a)), 0) << g.name() << ": a·a⁻¹, a = " << a;
    ASSERT_EQ(g.mul(g.inverse(a), a), 0) << g.name() << ": a⁻¹·a, a = " << a;
    for (int64_t b = 0; b < n; ++b) {
      const int64_t ab = g.mul(a, b);
      ASSERT_TRUE(ab >= 0 && ab < n) << g.name() << ": closure fails at " << a << "·" << b;
      for (int64_t c = 0; c < n; ++c)
        ASSERT_EQ(g.mul(ab, c), g.mul(a, g.mul(b, c))) << g.name() << ": (ab)c ≠ a(bc) at " << a << "," << b
                                                       << "," << c;
    }
  }
  EXPECT_EQ(g.identity(), 0);
}

TEST(GroupTest, Orders) {
  const std::vector<std::pair<std::string, int64_t>> cases = {
      {"S1", 1},   {"S2", 2},     {"S3", 6},       {"S4", 24},     {"S5", 120},      {"S6", 720},
      {"A1", 1},   {"A2", 1},     {"A3", 3},       {"A4", 12},     {"A5", 60},       {"A6", 360},
      {"Z1", 1},   {"Z7", 7},     {"Z60", 60},     {"A4_x_Z5", 60}, {"S3_x_Z2_x_Z2", 24}};
  for (const auto& [name, order] : cases) EXPECT_EQ(Group::from_name(name).order(), order) << name;
}

TEST(GroupTest, LargestGroups) {
  // S7 is the largest permutation group (kMaxOrder = 5040): its table has 25.4 M entries.
  const Group s7 = Group::from_name("S7");
  EXPECT_EQ(s7.order(), 5040);
  EXPECT_EQ(Group::from_name("A7").order(), 2520);
  EXPECT_EQ(Group::from_name("Z5040").order(), Group::kMaxOrder);
  // Sampled associativity and inverses on S7 (the exhaustive check would be 1.3·10¹¹ products).
  std::mt19937_64 rng(7);
  for (int i = 0; i < 20000; ++i) {
    const int64_t a = static_cast<int64_t>(rng() % 5040), b = static_cast<int64_t>(rng() % 5040),
                  c = static_cast<int64_t>(rng() % 5040);
    ASSERT_EQ(s7.mul(s7.mul(a, b), c), s7.mul(a, s7.mul(b, c))) << a << "," << b << "," << c;
    ASSERT_EQ(s7.mul(a, s7.inverse(a)), 0);
  }
  EXPECT_EQ(s7.element_name(5039), "(7 6 5 4 3 2 1)");
}

TEST(GroupTest, AxiomsExhaustive) {
  for (const char* name : {"S1", "S2", "S3", "S4", "A3", "A4", "A5", "Z1", "Z12", "Z60", "A4_x_Z5",
                           "S3_x_Z2_x_Z2", "Z2xZ3xS3"})
    expect_group_axioms(Group::from_name(name));
}

TEST(GroupTest, AssociativityS5) {
  // All 120³ ≈ 1.7 M triples (fast), plus sampled triples on S6.
  expect_group_axioms(Group::from_name("S5"));
  const Group s6 = Group::from_name("S6");
  std::mt19937_64 rng(6);
  for (int i = 0; i < 20000; ++i) {
    const int64_t a = static_cast<int64_t>(rng() % 720), b = static_cast<int64_t>(rng() % 720),
                  c = static_cast<int64_t>(rng() % 720);
    ASSERT_EQ(s6.mul(s6.mul(a, b), c), s6.mul(a, s6.mul(b, c))) << a << "," << b << "," << c;
  }
}

TEST(GroupTest, S3ElementOrderIsLexicographic) {
  const Group s3 = Group::from_name("S3");
  const std::vector<std::string> expected = {"(1 2 3)", "(1 3 2)", "(2 1 3)", "(2 3 1)", "(3 1 2)", "(3 2 1)"};
  for (int64_t a = 0; a < 6; ++a) EXPECT_EQ(s3.element_name(a), expected[a]) << a;
}

TEST(GroupTest, CompositionIsAOfB) {
  // Hand-written: a = (2 1 3) (index 2), b = (1 3 2) (index 1).
  //   a·b: i ↦ a(b(i)) = 1→a(1)=2, 2→a(3)=3, 3→a(2)=1  ⇒ (2 3 1), index 3;
  //   b·a: i ↦ b(a(i)) = 1→b(2)=3, 2→b(1)=1, 3→b(3)=2  ⇒ (3 1 2), index 4.
  const Group s3 = Group::from_name("S3");
  EXPECT_EQ(s3.mul(2, 1), 3);
  EXPECT_EQ(s3.mul(1, 2), 4);
  // A 3-cycle and its inverse: (2 3 1)⁻¹ = (3 1 2).
  EXPECT_EQ(s3.inverse(3), 4);
  EXPECT_EQ(s3.inverse(1), 1);  // transpositions are involutions

  // S4 and S5 in full against composition of explicit permutations.
  for (int n : {4, 5}) {
    const Group g = Group::from_name("S" + std::to_string(n));
    const auto perms = lexicographic_permutations(n);
    std::map<std::vector<int>, int64_t> index;
    for (size_t i = 0; i < perms.size(); ++i) index[perms[i]] = static_cast<int64_t>(i);
    ASSERT_EQ(g.order(), static_cast<int64_t>(perms.size()));
    for (int64_t a = 0; a < g.order(); ++a) {
      ASSERT_EQ(g.element_name(a), one_line(perms[a]));
      for (int64_t b = 0; b < g.order(); ++b)
        ASSERT_EQ(g.mul(a, b), index.at(compose(perms[a], perms[b]))) << "S" << n << ": " << a << "·" << b;
    }
  }
}

TEST(GroupTest, AlternatingIsEvenPermutations) {
  for (int n = 1; n <= 6; ++n) {
    const Group a_n = Group::from_name("A" + std::to_string(n));
    std::vector<std::vector<int>> evens;
    for (const auto& p : lexicographic_permutations(n))
      if (even(p)) evens.push_back(p);
    int64_t factorial = 1;
    for (int i = 2; i <= n; ++i) factorial *= i;
    ASSERT_EQ(a_n.order(), std::max<int64_t>(1, factorial / 2)) << n;
    ASSERT_EQ(a_n.order(), static_cast<int64_t>(evens.size())) << n;
    std::map<std::vector<int>, int64_t> index;
    for (size_t i = 0; i < evens.size(); ++i) index[evens[i]] = static_cast<int64_t>(i);
    for (int64_t a = 0; a < a_n.order(); ++a) {
      ASSERT_EQ(a_n.element_name(a), one_line(evens[a])) << "A" << n << " element " << a;
      for (int64_t b = 0; b < a_n.order(); ++b)
        ASSERT_EQ(a_n.mul(a, b), index.at(compose(evens[a], evens[b]))) << "A" << n << ": " << a << "·" << b;
    }
  }
}

TEST(GroupTest, Abelian) {
  for (const char* name : {"S3", "S4", "S5", "A4", "A5", "A4_x_Z5", "S3_x_Z2"})
    EXPECT_FALSE(Group::from_name(name).is_abelian()) << name;
  for (const char* name : {"S1", "S2", "A3", "Z1", "Z2", "Z60", "Z3_x_Z4", "Z2xZ2xZ2"})
    EXPECT_TRUE(Group::from_name(name).is_abelian()) << name;
}

TEST(GroupTest, CyclicIsAddition) {
  const Group z = Group::from_name("Z60");
  for (int64_t a = 0; a < 60; ++a) {
    EXPECT_EQ(z.element_name(a), std::to_string(a));
    EXPECT_EQ(z.inverse(a), (60 - a) % 60);
    for (int64_t b = 0; b < 60; ++b) ASSERT_EQ(z.mul(a, b), (a + b) % 60);
  }
}

TEST(GroupTest, DirectProductIsComponentwise) {
  const Group a4 = Group::from_name("A4"), z5 = Group::from_name("Z5");
  const Group p = Group::from_name("A4_x_Z5");
  EXPECT_EQ(p.name(), "A4_x_Z5");
  for (int64_t i1 = 0; i1 < 12; ++i1)
    for (int64_t i2 = 0; i2 < 5; ++i2) {
      const int64_t x = i1 * 5 + i2;
      EXPECT_EQ(p.element_name(x), "(" + a4.element_name(i1) + ", " + std::to_string(i2) + ")");
      EXPECT_EQ(p.inverse(x), a4.inverse(i1) * 5 + z5.inverse(i2));
      for (int64_t j1 = 0; j1 < 12; ++j1)
        for (int64_t j2 = 0; j2 < 5; ++j2)
          ASSERT_EQ(p.mul(x, j1 * 5 + j2), a4.mul(i1, j1) * 5 + (i2 + j2) % 5);
    }
  // The two-factor function and the parsed name agree, element for element.
  const Group q = direct_product(a4, z5);
  EXPECT_EQ(q.name(), "A4_x_Z5");
  for (int64_t x = 0; x < 60; ++x)
    for (int64_t y = 0; y < 60; ++y) ASSERT_EQ(q.mul(x, y), p.mul(x, y));

  // Three factors: lexicographic triples, x = (i1·2 + i2)·2 + i3, flat names.
  const Group s3 = Group::from_name("S3");
  const Group t = Group::from_name("S3_x_Z2_x_Z2");
  EXPECT_EQ(t.element_name(1 * 4 + 1 * 2 + 0), "((1 3 2), 1, 0)");
  for (int64_t x = 0; x < 24; ++x)
    for (int64_t y = 0; y < 24; ++y) {
      const int64_t z = (s3.mul(x / 4, y / 4) * 2 + (x / 2 % 2 + y / 2 % 2) % 2) * 2 + (x % 2 + y % 2) % 2;
      ASSERT_EQ(t.mul(x, y), z) << x << "·" << y;
    }
}

TEST(GroupTest, NameForms) {
  const Group a = Group::from_name("A4xZ5"), b = Group::from_name("a4_x_z5");
  EXPECT_EQ(a.name(), "A4_x_Z5");
  EXPECT_EQ(b.name(), "A4_x_Z5");
  EXPECT_EQ(Group::from_name("s5").name(), "S5");
  for (int64_t x = 0; x < 60; ++x)
    for (int64_t y = 0; y < 60; ++y) ASSERT_EQ(a.mul(x, y), b.mul(x, y));
}

TEST(GroupTest, BadNamesThrow) {
  for (const char* name : {"", "S", "S0", "A0", "Z0", "Q8", "D4", "S8", "A8", "Z5041", "S5_x_S5", "A4_x_",
                           "_x_Z5", "A4_x_x_Z5", "A4_Z5", "S5 ", " S5", "S-3", "S+3", "Z99999999999999",
                           "Z12345678901234567890", "A5_x_Z100"}) {
    try {
      Group::from_name(name);
      ADD_FAILURE() << "no error for '" << name << "'";
    } catch (const c10::Error& e) {
      const std::string msg = e.what_without_backtrace();
      EXPECT_EQ(msg.find('\n'), std::string::npos) << "message is not one line: " << msg;
      EXPECT_NE(msg.find("S<n>"), std::string::npos) << "message does not list the accepted forms: " << msg;
      EXPECT_NE(msg.find(std::string("'") + name + "'"), std::string::npos) << "message does not name it: " << msg;
    }
  }
}

TEST(GroupTest, ElementNameOutOfRangeThrows) {
  const Group s3 = Group::from_name("S3");
  EXPECT_THROW(s3.element_name(6), c10::Error);
  EXPECT_THROW(s3.element_name(-1), c10::Error);
}

TEST(GroupTest, ConstructorValidatesTable) {
  // Z2 written by hand is accepted.
  const Group z2("Z2", 2, {0, 1, 1, 0}, {"0", "1"});
  EXPECT_EQ(z2.inverse(1), 1);
  EXPECT_THROW(Group("bad", 2, {0, 1, 1}, {"0", "1"}), c10::Error);           // wrong size
  EXPECT_THROW(Group("bad", 2, {0, 1, 1, 0}, {"0"}), c10::Error);             // wrong name count
  EXPECT_THROW(Group("bad", 2, {1, 0, 0, 1}, {"0", "1"}), c10::Error);        // 0 is not the identity
  EXPECT_THROW(Group("bad", 2, {0, 1, 1, 1}, {"0", "1"}), c10::Error);        // row repeats an element
  EXPECT_THROW(Group("bad", 2, {0, 1, 1, 2}, {"0", "1"}), c10::Error);        // entry out of range
  EXPECT_THROW(Group("bad", 0, {}, {}), c10::Error);                          // empty
  // Identity row/column fine, rows are permutations, but a column repeats: 3 elements, row 1 = (1 2 0),
  // row 2 = (2 0 1) is Z3; make row 2 = (2 1 0) so column 1 has 1 twice.
  EXPECT_THROW(Group("bad", 3, {0, 1, 2, 1, 2, 0, 2, 1, 0}, {"0", "1", "2"}), c10::Error);
}

TEST(GroupTest, DirectProductTooLargeThrows) {
  const Group s6 = Group::from_name("S6");
  EXPECT_THROW(direct_product(s6, s6), c10::Error);
  EXPECT_THROW(direct_product(std::vector<Group>{}), c10::Error);
}

}  // namespace
}  // namespace fprnn::tasks
