#pragma once
// The memory a CPU server may use when no --memory-budget is given: the cgroup's limit (v2
// memory.max of this process's cgroup and its parents, or v1 memory.limit_in_bytes) when one
// is set, else the machine's memory (MemTotal), whichever is smaller. A pod's memory limit is
// its cgroup's, so the default follows what Kubernetes allows.

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>

namespace ldcp::server {

struct HostMemoryLimit {
  int64_t bytes = 0;
  std::string source;  // e.g. "cgroup v2 memory.max of /kubepods/pod1", "MemTotal of /proc/meminfo"
};

struct HostMemoryPaths {
  std::filesystem::path proc_self_cgroup = "/proc/self/cgroup";
  std::filesystem::path cgroup_root = "/sys/fs/cgroup";
  std::filesystem::path meminfo = "/proc/meminfo";
};

// None when neither a cgroup limit nor /proc/meminfo can be read.
std::optional<HostMemoryLimit> host_memory_limit(const HostMemoryPaths& paths = {});

}  // namespace ldcp::server
