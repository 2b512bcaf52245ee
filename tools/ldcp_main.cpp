// ldcp: the offline command-line tool. Each subcommand lives in its own file (tools/commands.h).
#include <iostream>

#include <CLI/CLI.hpp>

#include "tools/commands.h"

int main(int argc, char** argv) {
  CLI::App app{"ldcp: Stable Diffusion 1.5 on libtorch with learned dynamic channel pruning"};
  app.require_subcommand(1);
  ldcp::tools::add_generate_command(app);
  ldcp::tools::add_init_demo_model_command(app);
  ldcp::tools::add_train_gates_command(app);
  ldcp::tools::add_bench_command(app);
  ldcp::tools::add_eval_pruning_command(app);
  ldcp::tools::add_tune_schedule_command(app);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  } catch (const std::exception& e) {
    std::cerr << "ldcp: error: " << e.what() << "\n";
    return 1;
  }
  return 0;
}
