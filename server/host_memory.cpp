#include "server/host_memory.h"

#include <algorithm>
#include <fstream>
#include <sstream>

namespace ldcp::server {
namespace {

namespace fs = std::filesystem;

// The first line of a small file, bounded (these are kernel files of a few bytes).
std::optional<std::string> first_line(const fs::path& path) {
  std::ifstream in(path);
  if (!in) return std::nullopt;
  std::string line;
  line.reserve(64);
  char c;
  while (line.size() < 256 && in.get(c) && c != '\n') line.push_back(c);
  return line;
}

std::optional<int64_t> parse_limit(const std::string& text) {
  if (text.empty() || text == "max") return std::nullopt;
  int64_t v = 0;
  for (char c : text) {
    if (c < '0' || c > '9') return std::nullopt;
    if (v > (INT64_MAX - 9) / 10) return std::nullopt;  // v1's "unlimited" is ~2^63
    v = v * 10 + (c - '0');
  }
  // cgroup v1 reports "no limit" as a huge page-aligned number.
  if (v <= 0 || v >= (int64_t{1} << 62)) return std::nullopt;
  return v;
}

// This process's cgroup in a hierarchy, from /proc/self/cgroup: the path of the line whose
// controllers are `controllers` ("" for v2's "0::/path", "memory" for v1's "4:memory:/path").
std::optional<std::string> own_cgroup(const HostMemoryPaths& p, const std::string& controllers) {
  std::ifstream in(p.proc_self_cgroup);
  std::string line;
  for (int i = 0; i < 64 && std::getline(in, line); ++i) {
    const auto a = line.find(':'), b = a == std::string::npos ? a : line.find(':', a + 1);
    if (b == std::string::npos || line.size() - b > 4096) continue;
    const std::string names = line.substr(a + 1, b - a - 1);
    const bool match = controllers.empty()
                           ? line.substr(0, a) == "0" && names.empty()
                           : ("," + names + ",").find("," + controllers + ",") != std::string::npos;
    if (match) return line.substr(b + 1);
  }
  return std::nullopt;
}

// The smallest limit in `file` from the process's cgroup up to the hierarchy's mount (a
// container may see its own cgroup, or only the root, there).
std::optional<HostMemoryLimit> smallest_limit(const fs::path& root, const std::string& rel,
                                              const std::string& file, const std::string& what) {
  std::optional<HostMemoryLimit> best;
  fs::path dir = root / fs::path(rel).relative_path();
  for (int depth = 0; depth < 64; ++depth) {
    if (auto text = first_line(dir / file)) {
      if (auto v = parse_limit(*text); v && (!best || *v < best->bytes)) {
        const auto shown = fs::relative(dir, root).generic_string();
        best = HostMemoryLimit{*v, what + " of /" + (shown == "." ? "" : shown)};
      }
    }
    if (dir == root || !dir.has_relative_path() || dir.parent_path() == dir) break;
    dir = dir.parent_path();
  }
  return best;
}

std::optional<HostMemoryLimit> cgroup_v2(const HostMemoryPaths& p) {
  auto rel = own_cgroup(p, "");
  if (!rel) return std::nullopt;
  return smallest_limit(p.cgroup_root, *rel, "memory.max", "cgroup v2 memory.max");
}

std::optional<HostMemoryLimit> cgroup_v1(const HostMemoryPaths& p) {
  auto rel = own_cgroup(p, "memory");
  if (!rel) return std::nullopt;
  return smallest_limit(p.cgroup_root / "memory", *rel, "memory.limit_in_bytes",
                        "cgroup v1 memory.limit_in_bytes");
}

std::optional<HostMemoryLimit> mem_total(const HostMemoryPaths& p) {
  std::ifstream in(p.meminfo);
  std::string line;
  for (int i = 0; i < 256 && std::getline(in, line); ++i) {
    std::istringstream fields(line);
    std::string key, unit;
    int64_t kib = 0;
    if (fields >> key >> kib >> unit && key == "MemTotal:" && unit == "kB" && kib > 0 &&
        kib < (int64_t{1} << 52)) {
      return HostMemoryLimit{kib * 1024, "MemTotal of " + p.meminfo.string()};
    }
  }
  return std::nullopt;
}

}  // namespace

std::optional<HostMemoryLimit> host_memory_limit(const HostMemoryPaths& paths) {
  auto cgroup = cgroup_v2(paths);
  if (!cgroup) cgroup = cgroup_v1(paths);
  auto total = mem_total(paths);
  if (cgroup && total) return cgroup->bytes <= total->bytes ? cgroup : total;
  return cgroup ? cgroup : total;
}

}  // namespace ldcp::server
