#include "server/metrics_basic_auth.h"

#include <cstdint>
#include <map>
#include <sstream>
#include <stdexcept>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <boost/beast/core/string.hpp>

namespace ldcp::server {

struct BasicAuthUsers {
  std::map<std::string, std::string> digests;  // user -> 32 raw bytes
};

namespace {

std::string sha256(const std::string& data) {
  unsigned char out[EVP_MAX_MD_SIZE];
  unsigned int n = 0;
  if (EVP_Digest(data.data(), data.size(), out, &n, EVP_sha256(), nullptr) != 1) {
    throw std::runtime_error("SHA-256 failed");
  }
  return std::string(reinterpret_cast<char*>(out), n);
}

int hex_value(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

// RFC 4648 base64 (padding optional); false on any other character.
bool base64_decode(const std::string& in, std::string& out) {
  static const std::string kAlphabet =
      "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  out.clear();
  uint32_t acc = 0;
  int bits = 0;
  size_t i = 0;
  for (; i < in.size() && in[i] != '='; ++i) {
    const auto v = kAlphabet.find(in[i]);
    if (v == std::string::npos) return false;
    acc = (acc << 6) | static_cast<uint32_t>(v);
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      out += static_cast<char>((acc >> bits) & 0xFF);
    }
  }
  for (; i < in.size(); ++i) {
    if (in[i] != '=') return false;
  }
  return true;
}

}  // namespace

std::shared_ptr<const BasicAuthUsers> parse_basic_auth(const std::string& text,
                                                       const std::string& path) {
  auto users = std::make_shared<BasicAuthUsers>();
  std::istringstream in(text);
  std::string line;
  for (int number = 1; std::getline(in, line); ++number) {
    while (!line.empty() && (line.back() == '\r' || line.back() == ' ')) line.pop_back();
    if (line.empty() || line[0] == '#') continue;
    const auto a = line.find(':');
    const auto b = a == std::string::npos ? a : line.find(':', a + 1);
    std::string digest;
    const std::string hex = b == std::string::npos ? "" : line.substr(b + 1);
    for (size_t i = 0; hex.size() == 64 && i < 64; i += 2) {
      const int hi = hex_value(hex[i]), lo = hex_value(hex[i + 1]);
      if (hi < 0 || lo < 0) break;
      digest += static_cast<char>(hi * 16 + lo);
    }
    if (a == 0 || b == std::string::npos || line.substr(a + 1, b - a - 1) != "sha256" ||
        digest.size() != 32) {
      throw std::runtime_error("--metrics-basic-auth-file: " + path + " line " +
                               std::to_string(number) +
                               ": expected user:sha256:<64 hex digits of the password's SHA-256>");
    }
    users->digests[line.substr(0, a)] = digest;
  }
  if (users->digests.empty()) {
    throw std::runtime_error("--metrics-basic-auth-file: " + path + " names no user");
  }
  return users;
}

size_t user_count(const BasicAuthUsers& users) { return users.digests.size(); }

bool basic_auth_ok(const BasicAuthUsers& users, const std::string& authorization) {
  static const std::string kScheme = "Basic ";
  if (authorization.size() <= kScheme.size() || authorization.size() > 1024) return false;
  if (!boost::beast::iequals(authorization.substr(0, kScheme.size()), kScheme)) return false;
  std::string decoded;
  if (!base64_decode(authorization.substr(kScheme.size()), decoded)) return false;
  const auto colon = decoded.find(':');
  if (colon == std::string::npos) return false;
  const auto it = users.digests.find(decoded.substr(0, colon));
  // The digest is compared in constant time; an unknown user still pays for one hash.
  const std::string digest = sha256(decoded.substr(colon + 1));
  if (it == users.digests.end()) return false;
  return CRYPTO_memcmp(digest.data(), it->second.data(), digest.size()) == 0;
}

}  // namespace ldcp::server
