#pragma once
// gzip content coding for the metrics endpoint's responses (zlib, Debian's zlib1g).

#include <string>
#include <string_view>

namespace ldcp::server {

// Whether an Accept-Encoding header value accepts gzip (RFC 9110 12.5.3): a "gzip" or "x-gzip"
// entry, or else "*", with a q-value above 0; "gzip;q=0" refuses it even beside "*".
bool accepts_gzip(std::string_view accept_encoding);

// `data` as a gzip member (RFC 1952). Throws std::runtime_error when zlib fails.
std::string gzip_compress(const std::string& data);

}  // namespace ldcp::server
