// Placeholder until its owner writes it.
#include "tools/commands.h"

namespace ldcp::tools {

void add_eval_pruning_command(CLI::App&) {}

}  // namespace ldcp::tools
