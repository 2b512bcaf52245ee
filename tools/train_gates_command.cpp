// Placeholder until its owner writes it.
#include "tools/commands.h"

namespace ldcp::tools {

void add_train_gates_command(CLI::App&) {}

}  // namespace ldcp::tools
