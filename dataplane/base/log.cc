#include "dataplane/base/log.hh"

#include <atomic>
#include <cstdio>
#include <ctime>
#include <mutex>
#include <unistd.h>

namespace apprelay::log {
namespace {
std::atomic<level> g_level{level::info};
std::string g_component = "apprelay";
std::once_flag g_component_once;

constexpr std::string_view level_name(level l) {
    switch (l) {
    case level::debug:
        return "debug";
    case level::info:
        return "info";
    case level::warn:
        return "warn";
    case level::error:
        return "error";
    }
    return "info";
}

bool needs_quotes(std::string_view s) {
    if (s.empty()) {
        return true;
    }
    for (char c : s) {
        if (c == ' ' || c == '"' || c == '=' || c == '\\' || static_cast<unsigned char>(c) < 0x20) {
            return true;
        }
    }
    return false;
}

void append_value(std::string& out, std::string_view s) {
    if (!needs_quotes(s)) {
        out += s;
        return;
    }
    out += '"';
    for (char c : s) {
        if (c == '"' || c == '\\') {
            out += '\\';
            out += c;
        } else if (c == '\n') {
            out += "\\n";
        } else if (static_cast<unsigned char>(c) < 0x20) {
            out += '?';
        } else {
            out += c;
        }
    }
    out += '"';
}
} // namespace

void set_level(level l) noexcept {
    g_level.store(l, std::memory_order_relaxed);
}
level current_level() noexcept {
    return g_level.load(std::memory_order_relaxed);
}
void set_component(std::string_view c) {
    g_component = std::string(c);
}

std::string format(level l, std::string_view event, std::initializer_list<field> fields) {
    std::string out;
    out.reserve(128);
    timespec ts{};
    clock_gettime(CLOCK_REALTIME, &ts);
    tm tmv{};
    gmtime_r(&ts.tv_sec, &tmv);
    char buf[64];
    std::snprintf(buf, sizeof buf, "ts=%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ", tmv.tm_year + 1900,
                  tmv.tm_mon + 1, tmv.tm_mday, tmv.tm_hour, tmv.tm_min, tmv.tm_sec,
                  ts.tv_nsec / 1000000);
    out += buf;
    out += " level=";
    out += level_name(l);
    out += " comp=";
    append_value(out, g_component);
    out += " event=";
    append_value(out, event);
    for (const auto& f : fields) {
        out += ' ';
        out += f.key;
        out += '=';
        std::visit(
            [&](const auto& v) {
                using V = std::decay_t<decltype(v)>;
                if constexpr (std::is_same_v<V, std::string_view>) {
                    append_value(out, v);
                } else if constexpr (std::is_same_v<V, bool>) {
                    out += v ? "true" : "false";
                } else if constexpr (std::is_same_v<V, double>) {
                    char nb[48];
                    std::snprintf(nb, sizeof nb, "%.6g", v);
                    out += nb;
                } else {
                    out += std::to_string(v);
                }
            },
            f.value);
    }
    return out;
}

void emit(level l, std::string_view event, std::initializer_list<field> fields) {
    std::string line = format(l, event, fields);
    line += '\n';
    // One write per line: atomic for pipes up to PIPE_BUF and in practice for files/terminals.
    ssize_t n = ::write(STDERR_FILENO, line.data(), line.size());
    (void)n;
}

} // namespace apprelay::log
