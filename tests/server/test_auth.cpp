// server/auth.h: the tokens-file parser (its error messages name the file and line and never
// quote a hash), token checks, the priority clamp, per-client limits and re-reading the file.

#include "server/auth.h"

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>
#include <thread>

#include <unistd.h>

#include <gtest/gtest.h>

namespace ldcp::server {
namespace {

std::string hex(const TokenHash& h) {
  std::string out;
  char b[3];
  for (uint8_t v : h) {
    std::snprintf(b, sizeof b, "%02x", v);
    out += b;
  }
  return out;
}

std::string line_for(const std::string& name, const std::string& token,
                     const std::string& fields = "") {
  return name + " sha256:" + hex(sha256(token)) + (fields.empty() ? "" : " " + fields) + "\n";
}

// The message of the std::invalid_argument that parse_tokens throws ("" if none).
std::string parse_error(const std::string& text) {
  try {
    parse_tokens(text, "tokens.txt");
  } catch (const std::invalid_argument& e) {
    return e.what();
  }
  return "";
}

TEST(TokensFile, Sha256KnownVectors) {
  EXPECT_EQ(hex(sha256("abc")), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  EXPECT_EQ(hex(sha256("")), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
}

TEST(TokensFile, ParsesClientsFieldsCommentsAndDefaults) {
  const std::string text = "# clients\n\n" + line_for("alice", "a") + "  bob\t" + hex(sha256("b")) +
                           " max_priority=5 max_in_flight=2 max_queued=1 methods=Generate "
                           "pruning=auto,off  # trailing comment\r\n" +
                           line_for("carol.x_1-2", "c", "max_priority=-3");
  const auto clients = parse_tokens(text, "tokens.txt");
  ASSERT_EQ(clients.size(), 3u);
  EXPECT_EQ(clients[0].name, "alice");
  EXPECT_EQ(clients[0].token_hash, sha256("a"));
  EXPECT_EQ(clients[0].max_priority, 0);
  EXPECT_EQ(clients[0].max_in_flight, 0);
  EXPECT_EQ(clients[0].max_queued, 0);
  EXPECT_TRUE(clients[0].generate && clients[0].generate_stream);
  EXPECT_TRUE(clients[0].pruning_auto && clients[0].pruning_off && clients[0].pruning_fixed);
  EXPECT_EQ(clients[1].name, "bob");
  EXPECT_EQ(clients[1].token_hash, sha256("b"));
  EXPECT_EQ(clients[1].max_priority, 5);
  EXPECT_EQ(clients[1].max_in_flight, 2);
  EXPECT_EQ(clients[1].max_queued, 1);
  EXPECT_TRUE(clients[1].generate);
  EXPECT_FALSE(clients[1].generate_stream);
  EXPECT_TRUE(clients[1].pruning_auto && clients[1].pruning_off);
  EXPECT_FALSE(clients[1].pruning_fixed);
  EXPECT_EQ(clients[2].max_priority, -3);
  EXPECT_TRUE(parse_tokens("# nobody\n\n", "t").empty());
}

TEST(TokensFile, ErrorsNameTheFileAndLine) {
  const std::string ok = line_for("alice", "a");
  EXPECT_EQ(parse_error(ok + "bob\n"), "tokens.txt:2: expected NAME SHA256 [key=value ...]");
  EXPECT_NE(parse_error(ok + ok).find("tokens.txt:2: client 'alice' appears twice"),
            std::string::npos);
  EXPECT_NE(parse_error(ok + "bob sha256:" + hex(sha256("a")) + "\n")
                .find("tokens.txt:2: client 'bob' has the same token hash"),
            std::string::npos);
  EXPECT_NE(parse_error("\n\n" + line_for("anonymous", "x")).find("tokens.txt:3: "),
            std::string::npos);
  EXPECT_NE(parse_error(line_for("bad/name", "x")).find("tokens.txt:1: the client name"),
            std::string::npos);
  EXPECT_NE(parse_error(line_for(std::string(65, 'n'), "x")).find("tokens.txt:1:"),
            std::string::npos);
  EXPECT_NE(parse_error(line_for("a", "x", "max_priority=1001")).find("tokens.txt:1: max_priority"),
            std::string::npos);
  EXPECT_NE(parse_error(line_for("a", "x", "max_in_flight=-1")).find("max_in_flight"),
            std::string::npos);
  EXPECT_NE(parse_error(line_for("a", "x", "max_queued=two")).find("max_queued"),
            std::string::npos);
  EXPECT_NE(parse_error(line_for("a", "x", "color=red")).find("unknown field 'color'"),
            std::string::npos);
  EXPECT_NE(parse_error(line_for("a", "x", "nokey")).find("expected key=value"), std::string::npos);
  EXPECT_NE(parse_error(line_for("a", "x", "methods=Delete")).find("methods"), std::string::npos);
  EXPECT_NE(parse_error(line_for("a", "x", "pruning=some")).find("pruning"), std::string::npos);
}

TEST(TokensFile, ABadHashIsNotQuoted) {
  // A token pasted where its hash belongs must not reach the logs.
  const std::string secret = "s3cr3t-token-value-0123456789";
  const auto e = parse_error("alice " + secret + "\n");
  EXPECT_NE(e.find("tokens.txt:1: the second column must be the SHA-256"), std::string::npos);
  EXPECT_EQ(e.find(secret), std::string::npos) << e;
  EXPECT_EQ(e.find("s3cr3t"), std::string::npos) << e;
  const auto e2 = parse_error("alice sha256:" + std::string(63, 'a') + "g\n");
  EXPECT_NE(e2.find("tokens.txt:1:"), std::string::npos);
  EXPECT_EQ(e2.find("aaaa"), std::string::npos) << e2;
}

class AuthFile : public ::testing::Test {
 protected:
  void SetUp() override {
    path_ = std::filesystem::temp_directory_path() /
            ("ldcp-auth-" + std::to_string(::getpid()) + "-" +
             ::testing::UnitTest::GetInstance()->current_test_info()->name());
  }
  void TearDown() override { std::filesystem::remove(path_); }
  void write(const std::string& text) {
    std::ofstream f(path_);
    f << text;
  }
  std::filesystem::path path_;
};

TEST_F(AuthFile, TokensAreCheckedAndMissingOrWrongOnesRefused) {
  write(line_for("alice", "tok-a") + line_for("bob", "tok-b"));
  Authenticator auth(path_.string(), std::chrono::milliseconds(0));
  EXPECT_TRUE(auth.enabled());
  EXPECT_EQ(auth.client_names(), (std::vector<std::string>{"alice", "bob"}));
  auto none = auth.authenticate("");
  EXPECT_EQ(none.code, AuthCode::kUnauthenticated);
  EXPECT_EQ(none.client, "unauthenticated");
  auto wrong = auth.authenticate("Bearer tok-c");
  EXPECT_EQ(wrong.code, AuthCode::kUnauthenticated);
  EXPECT_EQ(wrong.message.find("tok-c"), std::string::npos);
  EXPECT_EQ(auth.authenticate("Basic tok-a").code, AuthCode::kUnauthenticated);
  EXPECT_EQ(auth.authenticate("tok-a").code, AuthCode::kUnauthenticated);
  auto a = auth.authenticate("Bearer tok-a");
  EXPECT_EQ(a.code, AuthCode::kOk);
  EXPECT_EQ(a.client, "alice");
  EXPECT_EQ(auth.authenticate("bearer tok-b").client, "bob");

  Authenticator off("", std::chrono::milliseconds(0));
  EXPECT_FALSE(off.enabled());
  auto anon = off.authenticate("");
  EXPECT_EQ(anon.code, AuthCode::kOk);
  EXPECT_EQ(anon.client, "anonymous");
  auto adm = off.admit(anon, "Generate", PruningKind::kFixed, 999);
  EXPECT_EQ(adm.code, AuthCode::kOk);
  EXPECT_EQ(adm.priority, 999);  // auth off: the priority as asked
}

TEST_F(AuthFile, PriorityClampPermissionsAndLimits) {
  write(line_for("alice", "a", "max_priority=10 max_in_flight=3 max_queued=2") +
        line_for("bob", "b", "methods=Generate pruning=auto"));
  Authenticator auth(path_.string(), std::chrono::milliseconds(0));
  const auto alice = auth.authenticate("Bearer a");
  const auto bob = auth.authenticate("Bearer b");
  EXPECT_EQ(auth.admit(bob, "Generate", PruningKind::kAuto, 50).priority, 0);  // default max 0
  EXPECT_EQ(auth.admit(bob, "Generate", PruningKind::kAuto, -5).priority, -5);
  EXPECT_EQ(auth.admit(bob, "GenerateStream", PruningKind::kAuto, 0).code,
            AuthCode::kPermissionDenied);
  EXPECT_EQ(auth.admit(bob, "Generate", PruningKind::kFixed, 0).code, AuthCode::kPermissionDenied);
  EXPECT_EQ(auth.admit(bob, "Generate", PruningKind::kOff, 0).code, AuthCode::kPermissionDenied);

  auto r1 = auth.admit(alice, "GenerateStream", PruningKind::kFixed, 100);
  ASSERT_EQ(r1.code, AuthCode::kOk);
  EXPECT_EQ(r1.priority, 10);
  auto r2 = auth.admit(alice, "Generate", PruningKind::kAuto, 3);
  ASSERT_EQ(r2.code, AuthCode::kOk);
  EXPECT_EQ(r2.priority, 3);
  // Two queued: the third is over max_queued.
  auto r3 = auth.admit(alice, "Generate", PruningKind::kAuto, 0);
  EXPECT_EQ(r3.code, AuthCode::kResourceExhausted);
  EXPECT_NE(r3.message.find("max_queued"), std::string::npos);
  r1.ticket->started();
  r1.ticket->started();  // idempotent
  auto r4 = auth.admit(alice, "Generate", PruningKind::kAuto, 0);
  ASSERT_EQ(r4.code, AuthCode::kOk);
  // Three in flight (one running, two queued): over max_in_flight.
  r4.ticket->started();
  auto r5 = auth.admit(alice, "Generate", PruningKind::kAuto, 0);
  EXPECT_EQ(r5.code, AuthCode::kResourceExhausted);
  EXPECT_NE(r5.message.find("max_in_flight"), std::string::npos);
  r2.ticket->release();  // finished while queued
  r2.ticket->release();
  EXPECT_EQ(auth.admit(alice, "Generate", PruningKind::kAuto, 0).code, AuthCode::kOk);
  // That admission's ticket was dropped at once (its destructor released it).
  auto r6 = auth.admit(alice, "Generate", PruningKind::kAuto, 0);
  EXPECT_EQ(r6.code, AuthCode::kOk);
}

TEST_F(AuthFile, ReloadedWhenItChangesAndKeptWhenTheNewOneIsBad) {
  write(line_for("alice", "a"));
  Authenticator auth(path_.string(), std::chrono::milliseconds(20));
  EXPECT_EQ(auth.authenticate("Bearer a").code, AuthCode::kOk);
  write(line_for("bob", "b", "max_priority=1"));
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (auth.authenticate("Bearer b").code != AuthCode::kOk &&
         std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  EXPECT_EQ(auth.authenticate("Bearer b").client, "bob");
  EXPECT_EQ(auth.authenticate("Bearer a").code, AuthCode::kUnauthenticated);
  write("bob not-a-hash\n");
  EXPECT_FALSE(auth.reload());
  EXPECT_EQ(auth.authenticate("Bearer b").code, AuthCode::kOk);
  std::filesystem::remove(path_);
  EXPECT_FALSE(auth.reload());
  EXPECT_EQ(auth.authenticate("Bearer b").code, AuthCode::kOk);
}

TEST_F(AuthFile, AnUnparsableFileFailsAtStart) {
  write(line_for("alice", "a") + "oops\n");
  try {
    Authenticator auth(path_.string(), std::chrono::milliseconds(0));
    FAIL() << "no error";
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find(path_.string() + ":2:"), std::string::npos) << e.what();
  }
  EXPECT_THROW(Authenticator((path_.string() + ".missing"), std::chrono::milliseconds(0)),
               std::invalid_argument);
}

}  // namespace
}  // namespace ldcp::server

namespace ldcp::server {
namespace {

TEST_F(AuthFile, ListModelsNeedsATokenAndTheMethod) {
  write(line_for("alice", "a") + line_for("bob", "b", "methods=Generate") +
        line_for("lister", "l", "methods=ListModels"));
  Authenticator auth(path_.string(), std::chrono::milliseconds(0));
  EXPECT_TRUE(Authenticator::may_call(auth.authenticate("Bearer a"), "ListModels"));  // default
  EXPECT_FALSE(Authenticator::may_call(auth.authenticate("Bearer b"), "ListModels"));
  const auto lister = auth.authenticate("Bearer l");
  EXPECT_TRUE(Authenticator::may_call(lister, "ListModels"));
  EXPECT_FALSE(Authenticator::may_call(lister, "Generate"));
  EXPECT_EQ(auth.admit(lister, "Generate", PruningKind::kAuto, 0).code,
            AuthCode::kPermissionDenied);
  // ListModels is not a generation method: admit() never admits it.
  EXPECT_EQ(auth.admit(auth.authenticate("Bearer a"), "ListModels", PruningKind::kAuto, 0).code,
            AuthCode::kPermissionDenied);
  EXPECT_EQ(auth.authenticate("Bearer nope").code, AuthCode::kUnauthenticated);
  // Authentication off: anyone may list.
  Authenticator off("", std::chrono::milliseconds(0));
  EXPECT_TRUE(Authenticator::may_call(off.authenticate(""), "ListModels"));
}

}  // namespace
}  // namespace ldcp::server
