// The metrics endpoint's pure parts (server/metrics_http.h uses them): Accept-Encoding parsing and
// gzip (http_gzip.h), the basic-auth file and header check (metrics_basic_auth.h), and change
// detection of re-read files (watched_files.h). The endpoint itself, over real sockets and with
// openssl's certificates: tests/server/metrics_endpoint_test.py and metrics_tls_test.py.

#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include <gtest/gtest.h>
#include <openssl/evp.h>
#include <zlib.h>

#include "server/http_gzip.h"
#include "server/metrics_basic_auth.h"
#include "server/watched_files.h"

namespace ldcp::server {
namespace {

namespace fs = std::filesystem;

TEST(AcceptsGzip, NamedOrWildcardWithPositiveQ) {
  for (const char* yes : {"gzip", "GZip", "x-gzip", " gzip ", "deflate, gzip ; q=0.5", "*",
                          "gzip;q=1.0, identity;q=0.5, *;q=0.1", "br;q=0, gzip;Q=0.001"}) {
    EXPECT_TRUE(accepts_gzip(yes)) << yes;
  }
  for (const char* no :
       {"", "identity", "br, deflate", "gzip;q=0", "gzip;q=0.000", "gzip;q=0, *", "*;q=0",
        "gzip;q=2", "gzip;q=abc", "gzip;q=", "gzipx", "identity, *;q=0"}) {
    EXPECT_FALSE(accepts_gzip(no)) << no;
  }
}

std::string gunzip(const std::string& data) {
  z_stream z{};
  EXPECT_EQ(inflateInit2(&z, 15 + 16), Z_OK);
  std::string out(1 << 20, '\0');
  z.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(data.data()));
  z.avail_in = static_cast<uInt>(data.size());
  z.next_out = reinterpret_cast<Bytef*>(out.data());
  z.avail_out = static_cast<uInt>(out.size());
  EXPECT_EQ(inflate(&z, Z_FINISH), Z_STREAM_END);
  out.resize(z.total_out);
  inflateEnd(&z);
  return out;
}

TEST(GzipCompress, IsAGzipMemberThatRoundTrips) {
  std::string text;
  for (int i = 0; i < 2000; ++i)
    text += "ldcp_requests_total{method=\"Generate\"} " + std::to_string(i) + "\n";
  const std::string packed = gzip_compress(text);
  ASSERT_GE(packed.size(), 18u);
  EXPECT_EQ(static_cast<unsigned char>(packed[0]), 0x1f);  // RFC 1952 magic
  EXPECT_EQ(static_cast<unsigned char>(packed[1]), 0x8b);
  EXPECT_LT(packed.size(), text.size() / 5);
  EXPECT_EQ(gunzip(packed), text);
  EXPECT_EQ(gunzip(gzip_compress("")), "");
}

std::string sha256_hex(const std::string& data) {
  unsigned char out[EVP_MAX_MD_SIZE];
  unsigned int n = 0;
  EVP_Digest(data.data(), data.size(), out, &n, EVP_sha256(), nullptr);
  std::string hex;
  char byte[3];
  for (unsigned i = 0; i < n; ++i) {
    std::snprintf(byte, sizeof byte, "%02x", out[i]);
    hex += byte;
  }
  return hex;
}

// "Basic base64(user:password)", the base64 from Python's base64 module.
const char* kPromHeader = "Basic cHJvbTpzM2NyZXQ=";  // prom:s3cret

TEST(BasicAuth, ParsesUsersAndChecksPasswords) {
  const auto users = parse_basic_auth("# scrapers\n\nprom:sha256:" + sha256_hex("s3cret") +
                                          "\r\nother:sha256:" + sha256_hex("x") + "  \n",
                                      "/etc/users");
  EXPECT_EQ(user_count(*users), 2u);
  EXPECT_TRUE(basic_auth_ok(*users, kPromHeader));
  EXPECT_TRUE(basic_auth_ok(*users, "basic cHJvbTpzM2NyZXQ"));        // scheme case, no padding
  EXPECT_FALSE(basic_auth_ok(*users, "Basic cHJvbTpzM2NyZXU="));      // prom:s3creu
  EXPECT_FALSE(basic_auth_ok(*users, "Basic c29tZW9uZTpzM2NyZXQ="));  // someone:s3cret
  EXPECT_FALSE(basic_auth_ok(*users, "Bearer cHJvbTpzM2NyZXQ="));
  EXPECT_FALSE(basic_auth_ok(*users, "Basic cHJvbTpzM2NyZXQ=!"));
  EXPECT_FALSE(basic_auth_ok(*users, "Basic "));
  EXPECT_FALSE(basic_auth_ok(*users, "Basic " + std::string(2000, 'A')));
}

TEST(BasicAuth, ErrorsNameTheOptionFileAndLineNeverTheDigest) {
  const std::string digest = sha256_hex("s3cret");
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"prom:md5:" + digest, "line 1: expected user:sha256:"},
      {"# c\nprom:sha256:" + digest.substr(1), "line 2: expected user:sha256:"},
      {"prom:sha256:" + digest + "0", "line 1: expected"},
      {"prom:sha256:" + digest.substr(0, 63) + "g", "line 1: expected"},
      {":sha256:" + digest, "line 1: expected"},
      {"prom" + digest, "line 1: expected"},
      {"# nobody\n\n", "names no user"},
      {"", "names no user"},
  };
  for (const auto& [text, message] : cases) {
    try {
      parse_basic_auth(text, "/etc/users");
      ADD_FAILURE() << "accepted: " << text;
    } catch (const std::runtime_error& e) {
      const std::string what = e.what();
      EXPECT_EQ(what.rfind("--metrics-basic-auth-file: /etc/users ", 0), 0u) << what;
      EXPECT_NE(what.find(message), std::string::npos) << what;
      EXPECT_EQ(what.find(digest.substr(0, 16)), std::string::npos) << what;
    }
  }
}

class WatchedFilesTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / ("ldcp-watched-" + std::to_string(::getpid()));
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }
  // Replaced by rename, as Secret volumes and cert-manager do.
  std::string write(const std::string& name, const std::string& text) {
    const auto path = dir_ / name;
    std::ofstream(path.string() + ".new", std::ios::binary) << text;
    fs::rename(path.string() + ".new", path);
    return path.string();
  }
  fs::path dir_;
};

TEST_F(WatchedFilesTest, ReportsNewContentOnceAndAcceptedOrRejectedContentNever) {
  const auto cert = write("c", "cert 1"), key = write("k", "key 1");
  WatchedFiles files({"--cert", "--key"}, {cert, key}, {"cert 1", "key 1"});
  std::vector<std::string> texts;
  std::string error;
  EXPECT_EQ(files.poll(texts, error), FileChange::kNone);
  write("c", "cert 1");  // rewritten, same bytes: not a change
  EXPECT_EQ(files.poll(texts, error), FileChange::kNone);

  write("c", "cert 2");  // half of a pair: the caller rejects it
  ASSERT_EQ(files.poll(texts, error), FileChange::kChanged);
  EXPECT_EQ(texts, (std::vector<std::string>{"cert 2", "key 1"}));
  files.reject(texts);
  EXPECT_EQ(files.poll(texts, error), FileChange::kNone);

  write("k", "key 2");  // the pair completed
  ASSERT_EQ(files.poll(texts, error), FileChange::kChanged);
  EXPECT_EQ(texts, (std::vector<std::string>{"cert 2", "key 2"}));
  files.accept(texts);
  EXPECT_EQ(files.poll(texts, error), FileChange::kNone);

  fs::remove(key);  // reported once, not at every poll
  ASSERT_EQ(files.poll(texts, error), FileChange::kUnreadable);
  EXPECT_EQ(error, "--key: cannot read " + key);
  error.clear();
  EXPECT_EQ(files.poll(texts, error), FileChange::kNone);
  EXPECT_EQ(error, "");
  write("k", "key 2");  // back as it was accepted
  EXPECT_EQ(files.poll(texts, error), FileChange::kNone);
  fs::remove(key);  // the same error again after a good read: reported again
  EXPECT_EQ(files.poll(texts, error), FileChange::kUnreadable);
}

TEST_F(WatchedFilesTest, ReadWholeFileIsBounded) {
  const auto path = write("big", std::string((4 << 20) + 1, 'x'));
  try {
    read_whole_file("--metrics-tls-cert", path);
    ADD_FAILURE() << "read a file over 4 MiB";
  } catch (const std::runtime_error& e) {
    EXPECT_EQ(std::string(e.what()), "--metrics-tls-cert: " + path + " exceeds 4 MiB");
  }
  EXPECT_EQ(read_whole_file("--x", write("exact", std::string(4 << 20, 'y'))).size(), 4u << 20);
  EXPECT_EQ(read_whole_file("--x", write("empty", "")), "");
  EXPECT_THROW(read_whole_file("--x", (dir_ / "missing").string()), std::runtime_error);
}

}  // namespace
}  // namespace ldcp::server
