// Placeholder until its owner writes it.
#include "tools/commands.h"

namespace ldcp::tools {

void add_bench_command(CLI::App&) {}

}  // namespace ldcp::tools
