// `ldcp init-demo-model`: a random-weight model folder in diffusers format.
#include <iostream>

#include "model/pipelines/demo_model.h"
#include "tools/commands.h"

namespace ldcp::tools {

void add_init_demo_model_command(CLI::App& app) {
  struct Args {
    std::string dir;
    pipelines::DemoModelOptions demo;
  };
  auto args = std::make_shared<Args>();
  auto* init_demo = app.add_subcommand("init-demo-model",
                                       "Write a random-weight model folder in diffusers format");
  init_demo->add_option("dir", args->dir, "Folder to write")->required();
  init_demo
      ->add_option("--config", args->demo.config, "tiny or sd15 (the exact SD1.5 architecture)")
      ->capture_default_str()
      ->check(CLI::IsMember(pipelines::demo_model_configs()));
  init_demo->add_option("--seed", args->demo.seed, "Seed of the random weights")
      ->capture_default_str();
  init_demo->final_callback([args] {
    pipelines::write_demo_model(args->dir, args->demo);
    std::cout << "wrote " << args->demo.config << " demo model to " << args->dir << "\n";
  });
}

}  // namespace ldcp::tools
