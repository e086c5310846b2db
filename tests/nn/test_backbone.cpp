// The LM backbone: vocabulary padding, the tied head, initialisation, weight-decay groups, gradients.
#include "testing.h"

#include "fprnn/common.h"
#include "fprnn/nn/backbone.h"

namespace fprnn::testing {
namespace {

nn::FPLM make_model(int64_t layers = 2, int64_t vocab = 13) {
  torch::manual_seed(5);
  ModelConfig mc;
  mc.layer.d_model = 8;
  mc.n_layers = layers;
  SolverConfig sc;
  sc.max_iter = 20;
  nn::FPLM m(mc, sc, vocab);
  m->to(torch::kFloat64);
  m->compute_dtype = torch::kFloat64;
  return m;
}

TEST(BackboneTest, PaddedVocabularyAndShapes) {
  EXPECT_EQ(nn::padded_vocab_size(67, 8), 72);   // A5
  EXPECT_EQ(nn::padded_vocab_size(127, 8), 128); // S5
  EXPECT_EQ(nn::padded_vocab_size(12, 4), 12);
  auto m = make_model();
  const Tensor ids = torch::randint(0, 13, {3, 7}, torch::kInt64);
  const Tensor logits = m->forward(ids);
  EXPECT_EQ(logits.sizes(), (std::vector<int64_t>{3, 7, 16}));
  EXPECT_EQ(m->last_stats().size(), 2u);
}

TEST(BackboneTest, HeadIsTiedToTheEmbedding) {
  // With every layer's output projection zeroed, the layers add nothing: logits = RMSNorm_f(E[ids]) Eᵀ.
  auto m = make_model();
  {
    torch::NoGradGuard g;
    for (auto& l : m->layers) l->as<nn::FPRNNLayerImpl>()->output_trans->weight_plain.zero_();
  }
  const Tensor ids = torch::tensor({{1, 2, 3}}, torch::kInt64);
  const Tensor e = m->embedding.index_select(0, ids.view(-1)).view({1, 3, 8});
  const Tensor expect = torch::matmul(m->norm_f->forward(e), m->embedding.t());
  expect_close(m->forward(ids), expect, 1e-14, "tied head");
}

TEST(BackboneTest, ReferenceInitialisation) {
  auto m = make_model(1, 67);
  // Every Linear bias is zeroed (lambda_proj, the mixer's alpha_proj); the embedding is N(0, 0.02²).
  for (const auto& p : m->named_parameters()) {
    const bool linear_bias = p.key().find("proj") != std::string::npos && p.key().find(".bias") != std::string::npos;
    if (linear_bias) {
      EXPECT_EQ(p.value().abs().max().item<double>(), 0.0) << p.key();
    }
  }
  const double std = m->embedding.std().item<double>();
  EXPECT_NEAR(std, 0.02, 0.004);
  // Conv biases keep PyTorch's default U(±1/√K) init (they are not Linear biases).
  EXPECT_GT(m->layers[0]->as<nn::FPRNNLayerImpl>()->conv1d_x->bias.abs().max().item<double>(), 0.0);
}

TEST(BackboneTest, DecayGroupsFollowTheReference) {
  auto m = make_model();
  const auto [decay, no_decay] = m->decay_groups();
  EXPECT_EQ(decay.size() + no_decay.size(), m->named_parameters().size());
  for (const auto& n : no_decay)
    EXPECT_TRUE(n.find("bias") != std::string::npos || n.find("norm") != std::string::npos) << n;
  for (const auto& n : decay) EXPECT_TRUE(n.find("bias") == std::string::npos && n.find("norm") == std::string::npos) << n;
  // The tied embedding and the mixer's weight-norm g and v are decayed, as in the reference.
  EXPECT_NE(std::find(decay.begin(), decay.end(), "embedding.weight"), decay.end());
  EXPECT_TRUE(std::any_of(decay.begin(), decay.end(), [](const std::string& n) { return n.find("weight_g") != std::string::npos; }));
}

TEST(BackboneTest, EveryParameterGetsAGradient) {
  auto m = make_model();
  m->train();
  const Tensor ids = torch::randint(0, 13, {2, 6}, torch::kInt64);
  m->forward(ids).pow(2).mean().backward();
  for (const auto& p : m->named_parameters()) {
    ASSERT_TRUE(p.value().grad().defined()) << p.key();
    EXPECT_GT(p.value().grad().abs().sum().item<double>(), 0.0) << p.key();
  }
}

TEST(BackboneTest, GradientOfTheHeadAgainstFiniteDifferences) {
  // The embedding enters both the input and the tied head; with the layers' fixed points held by
  // convergence (eval solver), the gradient w.r.t. the final norm's weight and the embedding rows the
  // head reads must match central differences. Layers are removed from the path by zeroing them.
  auto m = make_model(1);
  {
    torch::NoGradGuard g;
    m->layers[0]->as<nn::FPRNNLayerImpl>()->output_trans->weight_plain.zero_();
  }
  const Tensor ids = torch::tensor({{1, 4, 2}}, torch::kInt64);
  check_gradients([&] { return m->forward(ids); }, {m->embedding, m->norm_f->weight}, 1e-7, "head");
}

TEST(BackboneTest, BadIdsThrow) {
  auto m = make_model();
  EXPECT_THROW(m->forward(torch::zeros({3}, torch::kInt64)), c10::Error);
  EXPECT_THROW(m->forward(torch::zeros({2, 3}, torch::kFloat32)), c10::Error);
}

}  // namespace
}  // namespace fprnn::testing
