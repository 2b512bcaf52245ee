// The CPU server's default budget (server/host_memory.h): cgroup v2 and v1 limits of the
// process's own cgroup and its parents, "max"/unlimited, and MemTotal, on fake file trees.

#include <filesystem>
#include <fstream>

#include <gtest/gtest.h>

#include "server/host_memory.h"

namespace ldcp::server {
namespace {

namespace fs = std::filesystem;

struct Tree {
  Tree() : root(fs::temp_directory_path() / ("ldcp-host-memory-" + std::to_string(::getpid()))) {
    fs::remove_all(root);
    fs::create_directories(root / "cgroup");
    paths.proc_self_cgroup = root / "self_cgroup";
    paths.cgroup_root = root / "cgroup";
    paths.meminfo = root / "meminfo";
    write("meminfo", "MemTotal:       24000000 kB\nMemFree:        1000 kB\n");
  }
  ~Tree() { fs::remove_all(root); }
  void write(const fs::path& rel, const std::string& text) {
    fs::create_directories((root / rel).parent_path());
    std::ofstream(root / rel) << text;
  }
  fs::path root;
  HostMemoryPaths paths;
};

TEST(HostMemory, CgroupV2LimitOfTheProcessCgroupOrAParent) {
  Tree t;
  t.write("self_cgroup", "0::/kubepods/pod1/ctr\n");
  t.write("cgroup/kubepods/pod1/ctr/memory.max", "max\n");
  t.write("cgroup/kubepods/pod1/memory.max", "8589934592\n");
  t.write("cgroup/kubepods/memory.max", "17179869184\n");
  auto limit = host_memory_limit(t.paths);
  ASSERT_TRUE(limit);
  EXPECT_EQ(limit->bytes, 8589934592);
  EXPECT_EQ(limit->source, "cgroup v2 memory.max of /kubepods/pod1");
}

TEST(HostMemory, CgroupV1LimitAndItsUnlimitedValue) {
  Tree t;
  t.write("self_cgroup", "5:devices:/\n4:memory:/docker/abc\n0::/\n");
  t.write("cgroup/memory/docker/abc/memory.limit_in_bytes", "4294967296\n");
  auto limit = host_memory_limit(t.paths);
  ASSERT_TRUE(limit);
  EXPECT_EQ(limit->bytes, 4294967296);
  EXPECT_EQ(limit->source, "cgroup v1 memory.limit_in_bytes of /docker/abc");
  t.write("cgroup/memory/docker/abc/memory.limit_in_bytes", "9223372036854771712\n");
  limit = host_memory_limit(t.paths);
  ASSERT_TRUE(limit);  // unlimited: the machine's memory
  EXPECT_EQ(limit->bytes, int64_t{24000000} * 1024);
  EXPECT_NE(limit->source.find("MemTotal"), std::string::npos);
}

TEST(HostMemory, TheMachineWhenTheCgroupAllowsMoreAndNothingWhenNothingIsReadable) {
  Tree t;
  t.write("self_cgroup", "0::/big\n");
  t.write("cgroup/big/memory.max", "999999999999999\n");
  auto limit = host_memory_limit(t.paths);
  ASSERT_TRUE(limit);
  EXPECT_EQ(limit->bytes, int64_t{24000000} * 1024);
  t.write("cgroup/big/memory.max", "garbage\n");
  EXPECT_EQ(host_memory_limit(t.paths)->bytes, int64_t{24000000} * 1024);
  fs::remove(t.root / "meminfo");
  fs::remove(t.root / "self_cgroup");
  EXPECT_FALSE(host_memory_limit(t.paths));
}

}  // namespace
}  // namespace ldcp::server
