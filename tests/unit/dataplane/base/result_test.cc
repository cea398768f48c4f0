#include "dataplane/base/result.hh"

#include <gtest/gtest.h>
#include <memory>
#include <string>

using namespace apprelay;

TEST(result, holds_value_or_error) {
    result<int> a = 42;
    ASSERT_TRUE(a.ok());
    EXPECT_EQ(*a, 42);
    result<int> b = error(errc::frame_too_large, "frame length exceeds max");
    ASSERT_FALSE(b.ok());
    EXPECT_EQ(b.code(), errc::frame_too_large);
    EXPECT_EQ(b.err().detail, "frame length exceeds max");
}

TEST(result, moves_non_copyable_values) {
    result<std::unique_ptr<std::string>> r = std::make_unique<std::string>("x");
    ASSERT_TRUE(r.ok());
    auto p = std::move(r).value();
    EXPECT_EQ(*p, "x");
}

TEST(result, copy_and_assign_keep_state) {
    result<std::string> a = std::string("hello");
    result<std::string> b = errc::again;
    b = a;
    ASSERT_TRUE(b.ok());
    EXPECT_EQ(*b, "hello");
    a = errc::closed;
    EXPECT_EQ(a.code(), errc::closed);
}

TEST(result, void_result_defaults_to_ok) {
    result<void> r;
    EXPECT_TRUE(r.ok());
    result<void> e = errc::protocol_error;
    EXPECT_FALSE(e.ok());
    EXPECT_EQ(e.code(), errc::protocol_error);
}

TEST(errc, every_code_has_a_name_and_text) {
    EXPECT_EQ(name_of(errc::no_connector), "no_connector");
    EXPECT_EQ(to_string(errc::no_connector), "no connector available");
    EXPECT_EQ(name_of(errc::again), "again");
}
