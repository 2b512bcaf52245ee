#pragma once
// Shared helpers of the C++ tests: where the parity references are, and the comparison the
// parity tests use.

#include <filesystem>
#include <string>

#include <ATen/core/Tensor.h>
#include <gtest/gtest.h>

namespace ldcp::testing {

// ${LDCP_PARITY_DIR} (set by CTest): the folder the Python reference scripts write into.
std::filesystem::path parity_dir();
// ${LDCP_PARITY_DIR}/models/NAME: a model folder written by diffusers' save_pretrained.
std::filesystem::path parity_model(const std::string& name);
// ${LDCP_SOURCE_DIR}: the repository root.
std::filesystem::path source_dir();
// A fresh, empty temporary folder for one test, removed at process exit.
std::filesystem::path temp_dir(const std::string& tag);

// The components' tolerance: max |actual - expected| <= rel_tol * max(1, max |expected|),
// shapes equal. Reports the max difference and where, on failure.
::testing::AssertionResult AllClose(const at::Tensor& actual, const at::Tensor& expected,
                                    double rel_tol = 1e-4);

}  // namespace ldcp::testing

#define EXPECT_ALLCLOSE(actual, expected, ...) \
  EXPECT_TRUE(::ldcp::testing::AllClose((actual), (expected), ##__VA_ARGS__))
#define ASSERT_ALLCLOSE(actual, expected, ...) \
  ASSERT_TRUE(::ldcp::testing::AllClose((actual), (expected), ##__VA_ARGS__))
