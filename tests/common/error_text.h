#pragma once
// What the tests of error paths share (no libtorch): the message of the expected exception,
// and a substring check that prints both sides.

#include <functional>
#include <string>

#include <gtest/gtest.h>

namespace ldcp::testing {

// The what() of the Error that `action` throws; a test failure (and "") when it throws none.
template <typename Error>
std::string error_text(const std::function<void()>& action) {
  try {
    action();
  } catch (const Error& e) {
    return e.what();
  }
  ADD_FAILURE() << "no exception of the expected type";
  return {};
}

}  // namespace ldcp::testing

#define EXPECT_CONTAINS(text, fragment)               \
  EXPECT_NE((text).find(fragment), std::string::npos) \
      << "\"" << (fragment) << "\" not in: " << (text)
