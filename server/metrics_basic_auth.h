#pragma once
// HTTP basic authentication for the metrics endpoint (metrics_http.h): a file of
// `user:sha256:HEX` lines, HEX the SHA-256 of the password (the password itself is not stored),
// and the check of an Authorization header against it (the digest compared in constant time).

#include <memory>
#include <string>

namespace ldcp::server {

// user -> 32-byte digest.
struct BasicAuthUsers;

// "user:sha256:HEX" lines (blank lines and #-comments skipped) of `text`, read from `path`.
// Throws std::runtime_error naming the option, the file and the line, never quoting a digest.
std::shared_ptr<const BasicAuthUsers> parse_basic_auth(const std::string& text,
                                                       const std::string& path);
size_t user_count(const BasicAuthUsers& users);

// Whether the value of an Authorization header names a user of `users` with its password.
bool basic_auth_ok(const BasicAuthUsers& users, const std::string& authorization);

}  // namespace ldcp::server
