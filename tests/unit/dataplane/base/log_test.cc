#include "dataplane/base/log.hh"

#include <gtest/gtest.h>

using namespace apprelay;

TEST(log, formats_logfmt_with_quoting) {
    log::set_component("test");
    std::string line = log::format(log::level::warn, "tunnel_down",
                                   {{"tunnel", 7},
                                    {"reason", "frame length 70000 exceeds max"},
                                    {"ok", false},
                                    {"quote", "a\"b"}});
    EXPECT_NE(line.find(" level=warn comp=test event=tunnel_down tunnel=7 "), std::string::npos)
        << line;
    EXPECT_NE(line.find("reason=\"frame length 70000 exceeds max\""), std::string::npos) << line;
    EXPECT_NE(line.find("ok=false"), std::string::npos) << line;
    EXPECT_NE(line.find("quote=\"a\\\"b\""), std::string::npos) << line;
    EXPECT_EQ(line.rfind("ts=", 0), 0u);
}

TEST(log, newline_in_value_cannot_forge_a_line) {
    std::string line = log::format(log::level::info, "x", {{"v", "a\nlevel=error"}});
    EXPECT_EQ(line.find('\n'), std::string::npos);
}
