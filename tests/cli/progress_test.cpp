// The progress line of `ldcp` and `ldcp-client` (cli/progress.*), written to a file (the
// plain-line form that logs and pipes get).
#include "cli/progress.h"

#include <cstdio>
#include <string>

#include <gtest/gtest.h>

namespace {

using ldcp::cli::format_rate;
using ldcp::cli::Progress;

// Everything `write` printed through a Progress on a temporary file.
template <typename Write>
std::string captured(Write write) {
  std::FILE* file = std::tmpfile();
  EXPECT_NE(file, nullptr);
  write(file);
  std::string text;
  std::rewind(file);
  for (int c; (c = std::fgetc(file)) != EOF;) text.push_back(static_cast<char>(c));
  std::fclose(file);
  return text;
}

TEST(FormatRate, StepsPerSecondOrSecondsPerStep) {
  EXPECT_EQ(format_rate(2.5), "2.50 it/s");
  EXPECT_EQ(format_rate(1.0), "1.00 it/s");
  EXPECT_EQ(format_rate(0.25), "4.00 s/it");
  EXPECT_EQ(format_rate(std::nullopt), "? it/s");
  EXPECT_EQ(format_rate(0.0), "? it/s");
  EXPECT_EQ(format_rate(1.0 / 0.0), "? it/s");
}

// The server's progress events carry the time the steps took: a bar made on the first event
// shows that rate, not one step over the microseconds since the bar was made (it printed
// "103584.01 it/s" there).
TEST(Progress, FirstEventRateComesFromTheGivenClock) {
  const auto text = captured([](std::FILE* f) {
    Progress bar("generate", 20, f);
    bar.update(1, "level 0.00", 2.0);
    bar.update(5, "level 0.35", 5.0);
    bar.finish();
  });
  EXPECT_EQ(text,
            "generate 1/20 2.00 s/it ETA 38s level 0.00\n"
            "generate 5/20 1.00 it/s ETA 15s level 0.35\n");
}

TEST(Progress, WithoutAClockOrAStepTheRateIsUnknown) {
  const auto text = captured([](std::FILE* f) {
    Progress bar("denoising", 4, f);
    bar.update(0);
    bar.update(2, "", 0.0);
  });
  EXPECT_EQ(text, "denoising 0/4 ? it/s ETA ?\ndenoising 2/4 ? it/s ETA ?\n");
}

TEST(Progress, OwnClockCountsFromConstruction) {
  const auto text = captured([](std::FILE* f) {
    Progress bar("steps", 3, f);
    bar.update(1);
  });
  // Some rate, measured: not "?" and not absurd (one step in under a second is > 1 it/s).
  EXPECT_EQ(text.rfind("steps 1/3 ", 0), 0u) << text;
  EXPECT_EQ(text.find("? it/s"), std::string::npos) << text;
}

}  // namespace
