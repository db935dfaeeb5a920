#include "sdk/plan.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <string>

namespace ic {
namespace {

using ::testing::HasSubstr;

ModelConfig IndexerConfig(int layers) {
  ModelConfig c;
  c.arch = Architecture::kLlamaDsa;
  c.num_hidden_layers = layers;
  c.has_indexer = true;
  return c;
}

std::string PlanOf(const ModelConfig& c) {
  absl::StatusOr<Plan> p = PlanFromConfig(c);
  EXPECT_TRUE(p.ok()) << p.status();
  return p.ok() ? p->ToString() : "";
}

std::string ErrorOf(const absl::StatusOr<Plan>& p) {
  EXPECT_FALSE(p.ok());
  if (p.ok()) return "";
  EXPECT_EQ(p.status().code(), absl::StatusCode::kInvalidArgument);
  return std::string(p.status().message());
}

std::string TempPath(const std::string& name) {
  const char* dir = std::getenv("TEST_TMPDIR");
  return std::string(dir != nullptr ? dir : "/tmp") + "/ic_plan_test_" + std::to_string(getpid()) + "_" + name;
}

void WriteFile(const std::string& path, const std::string& text) {
  std::ofstream out(path);
  out << text;
}

// C6: 10 layers, index_topk_freq 4, no offset key (offset 2 as in HF, vLLM and SGLang).
TEST(PlanTest, C6FreqWithDefaultOffset) {
  ModelConfig c = IndexerConfig(10);
  c.index_topk_freq = 4;
  EXPECT_EQ(PlanOf(c), "FFSSSFSSSF");
  c.index_skip_topk_offset = 3;
  EXPECT_EQ(PlanOf(c), "FFFSSSFSSS");
  c.index_skip_topk_offset = 1;
  EXPECT_EQ(PlanOf(c), "FSSSFSSSFS");
  c.index_topk_freq = 1;
  EXPECT_EQ(PlanOf(c), "FFFFFFFFFF");
}

TEST(PlanTest, PrecedenceIndexerTypesThenPatternThenFreq) {
  ModelConfig c = IndexerConfig(4);
  EXPECT_EQ(PlanOf(c), "FFFF");  // nothing given: all Full
  c.index_topk_freq = 2;
  EXPECT_EQ(PlanOf(c), "FFSF");
  c.index_topk_pattern = "FSSF";
  EXPECT_EQ(PlanOf(c), "FSSF");
  c.indexer_types = std::vector<std::string>{"full", "shared", "full", "shared"};
  absl::StatusOr<Plan> p = PlanFromConfig(c);
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_EQ(p->ToString(), "FSFS");
  EXPECT_EQ(p->source, "checkpoint:indexer_types");
}

TEST(PlanTest, NoIndexerIsAllFull) {
  ModelConfig c = IndexerConfig(3);
  c.has_indexer = false;
  c.index_topk_pattern = "FSX";  // ignored: dense model
  EXPECT_EQ(PlanOf(c), "FFF");
}

// C7: invalid plans, each naming the position or the value.
TEST(PlanTest, C7InvalidPlans) {
  EXPECT_THAT(ErrorOf(ParsePlan("SFFF", 4)), HasSubstr("plan \"SFFF\": layer 0 must be Full"));
  EXPECT_THAT(ErrorOf(ParsePlan("FFXF", 4)), HasSubstr("plan \"FFXF\": position 2 is 'X'; expected 'F' or 'S'"));
  EXPECT_THAT(ErrorOf(ParsePlan("FSSSFSSSF", 10)), HasSubstr("has 9 layers; the model has 10"));
  EXPECT_THAT(ErrorOf(ParsePlan("", 1)), HasSubstr("has 0 layers; the model has 1"));

  ModelConfig c = IndexerConfig(4);
  c.indexer_types = std::vector<std::string>{"full", "full", "full", "half"};
  EXPECT_THAT(ErrorOf(PlanFromConfig(c)), HasSubstr("indexer_types[3] is \"half\"; expected \"full\" or \"shared\""));
  c.indexer_types = std::vector<std::string>{"shared", "full", "full", "full"};
  EXPECT_THAT(ErrorOf(PlanFromConfig(c)), HasSubstr("layer 0 must be Full"));
  c.indexer_types = std::vector<std::string>{"full", "full", "full"};
  EXPECT_THAT(ErrorOf(PlanFromConfig(c)), HasSubstr("has 3 layers; the model has 4"));

  c = IndexerConfig(4);
  c.index_topk_pattern = "FFF";  // one character shorter than the layer count
  EXPECT_THAT(ErrorOf(PlanFromConfig(c)), HasSubstr("index_topk_pattern: plan \"FFF\" has 3 layers; the model has 4"));
  c.index_topk_pattern = "FfSS";
  EXPECT_THAT(ErrorOf(PlanFromConfig(c)), HasSubstr("position 1 is 'f'"));

  c = IndexerConfig(4);
  c.index_topk_freq = 0;
  EXPECT_THAT(ErrorOf(PlanFromConfig(c)), HasSubstr("index_topk_freq must be at least 1, got 0"));
  c.index_topk_freq = 4;
  c.index_skip_topk_offset = 0;
  EXPECT_THAT(ErrorOf(PlanFromConfig(c)), HasSubstr("index_skip_topk_offset must be at least 1, got 0"));
}

TEST(PlanTest, SourceLayerAndCounts) {
  absl::StatusOr<Plan> p = ParsePlan("FFSSSFSSSF", 10);
  ASSERT_TRUE(p.ok());
  EXPECT_EQ(p->num_layers(), 10);
  EXPECT_EQ(p->NumFull(), 4);
  const int want[10] = {0, 1, 1, 1, 1, 5, 5, 5, 5, 9};
  for (int i = 0; i < 10; ++i) EXPECT_EQ(p->SourceLayer(i), want[i]) << i;
  EXPECT_TRUE(p->IsFull(5));
  EXPECT_FALSE(p->IsFull(6));
}

TEST(PlanTest, UniformPlans) {
  absl::StatusOr<Plan> p = UniformPlan(8, 4);
  ASSERT_TRUE(p.ok());
  EXPECT_EQ(p->ToString(), "FSSSFSSS");
  EXPECT_EQ(p->source, "uniform 1/4");
  // ceil(N / r) Full layers.
  for (int n = 1; n <= 13; ++n) {
    for (int r = 1; r <= 5; ++r) {
      absl::StatusOr<Plan> u = UniformPlan(n, r);
      ASSERT_TRUE(u.ok());
      EXPECT_EQ(u->NumFull(), (n + r - 1) / r) << n << " " << r;
    }
  }
  EXPECT_EQ(UniformPlan(3, 1)->ToString(), "FFF");
  EXPECT_EQ(UniformPlan(3, 8)->ToString(), "FSS");
  EXPECT_THAT(ErrorOf(UniformPlan(8, 0)), HasSubstr("r must be at least 1"));
  EXPECT_THAT(ErrorOf(UniformPlan(0, 2)), HasSubstr("num_layers must be positive"));
}

TEST(PlanTest, KeepFractions) {
  EXPECT_EQ(*ParseKeepFraction("1/4"), 4);
  EXPECT_EQ(*ParseKeepFraction("0.25"), 4);
  EXPECT_EQ(*ParseKeepFraction("1"), 1);
  EXPECT_EQ(*ParseKeepFraction("1/1"), 1);
  EXPECT_EQ(*ParseKeepFraction("2/8"), 4);
  EXPECT_EQ(*ParseKeepFraction("0.125"), 8);
  EXPECT_EQ(*ParseKeepFraction("0.5"), 2);
  EXPECT_EQ(*ParseKeepFraction("0.1"), 10);
  EXPECT_EQ(*ParseKeepFraction(" 1/2 "), 2);
  for (const char* bad : {"0", "0/4", "-0.25", "-1/4", "1/-4", "1.5", "3/2", "2/3", "0.3", "abc", "", "1/", "/4", "1/0",
                          "nan", "inf", "0.25x"}) {
    absl::StatusOr<int> r = ParseKeepFraction(bad);
    ASSERT_FALSE(r.ok()) << bad << " -> " << *r;
    EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(std::string(r.status().message()), HasSubstr(std::string("\"") + bad + "\"")) << bad;
  }
}

TEST(PlanTest, PlanFileRoundTrip) {
  const std::string path = TempPath("roundtrip.plan");
  Plan plan = *ParsePlan("FSSFSFSS", 8);
  plan.source = "search keep=1/4 calibration=calib.tokens";
  plan.search_losses = {2.91, 2.93, 2.95};
  ASSERT_TRUE(SavePlanFile(path, plan).ok());
  absl::StatusOr<Plan> back = LoadPlanFile(path, 8);
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(back->ToString(), "FSSFSFSS");
  EXPECT_EQ(back->source, plan.source);
  EXPECT_EQ(back->search_losses, plan.search_losses);
  std::remove(path.c_str());
}

TEST(PlanTest, PlanFileTextFormatAndBareString) {
  const std::string path = TempPath("text.plan");
  WriteFile(path, "# a comment\npattern: \"FSSSFSSS\"\nsource: \"hand\"\nstep_losses: 2.91  step_losses: 2.93\n");
  absl::StatusOr<Plan> p = LoadPlanFile(path, 8);
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_EQ(p->ToString(), "FSSSFSSS");
  EXPECT_EQ(p->source, "hand");
  EXPECT_EQ(p->search_losses, (std::vector<double>{2.91, 2.93}));

  WriteFile(path, "  FFSS\n\n");
  p = LoadPlanFile(path, 4);
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_EQ(p->ToString(), "FFSS");
  EXPECT_EQ(p->source, "file:" + path);
  std::remove(path.c_str());
}

TEST(PlanTest, PlanFileErrorsNameTheFile) {
  const std::string path = TempPath("bad.plan");
  WriteFile(path, "FFXF\n");
  absl::StatusOr<Plan> p = LoadPlanFile(path, 4);
  EXPECT_THAT(ErrorOf(p), HasSubstr(path + ": plan \"FFXF\": position 2 is 'X'"));

  WriteFile(path, "pattern: \"SFFF\"\n");
  EXPECT_THAT(ErrorOf(LoadPlanFile(path, 4)), HasSubstr(path + ": plan \"SFFF\": layer 0 must be Full"));

  WriteFile(path, "pattern: \"FFF\"\n");
  EXPECT_THAT(ErrorOf(LoadPlanFile(path, 4)), HasSubstr("has 3 layers; the model has 4"));

  WriteFile(path, "patern: \"FFFF\"\n");
  EXPECT_THAT(ErrorOf(LoadPlanFile(path, 4)), HasSubstr(path + ": not a plan file"));

  WriteFile(path, "");
  EXPECT_THAT(ErrorOf(LoadPlanFile(path, 4)), HasSubstr(path));
  std::remove(path.c_str());

  absl::StatusOr<Plan> missing = LoadPlanFile(TempPath("missing.plan"), 4);
  ASSERT_FALSE(missing.ok());
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(std::string(missing.status().message()), HasSubstr("missing.plan"));
}

}  // namespace
}  // namespace ic
