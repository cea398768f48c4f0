#pragma once
// Structured logging: one logfmt line per event (never per packet), written with a single
// write(2) so lines from different threads never interleave.
//   log::info("tunnel_up", {{"tunnel", 7}, {"connector", "c1"}});
#include <cstdint>
#include <initializer_list>
#include <string>
#include <string_view>
#include <variant>

namespace apprelay::log {

enum class level : uint8_t { debug, info, warn, error };

void set_level(level l) noexcept;
level current_level() noexcept;
// Tag added to every line (process name: relay, connector, ...).
void set_component(std::string_view c);

struct field {
    std::string_view key;
    std::variant<std::string_view, int64_t, uint64_t, double, bool> value;
    field(std::string_view k, std::string_view v) : key(k), value(v) {}
    field(std::string_view k, const char* v) : key(k), value(std::string_view(v)) {}
    field(std::string_view k, const std::string& v) : key(k), value(std::string_view(v)) {}
    field(std::string_view k, int v) : key(k), value(int64_t(v)) {}
    field(std::string_view k, long v) : key(k), value(int64_t(v)) {}
    field(std::string_view k, long long v) : key(k), value(int64_t(v)) {}
    field(std::string_view k, unsigned v) : key(k), value(uint64_t(v)) {}
    field(std::string_view k, unsigned long v) : key(k), value(uint64_t(v)) {}
    field(std::string_view k, unsigned long long v) : key(k), value(uint64_t(v)) {}
    field(std::string_view k, double v) : key(k), value(v) {}
    field(std::string_view k, bool v) : key(k), value(v) {}
};

// Formats one logfmt line (without trailing newline); exposed for tests.
std::string format(level l, std::string_view event, std::initializer_list<field> fields);
void emit(level l, std::string_view event, std::initializer_list<field> fields);

inline void debug(std::string_view ev, std::initializer_list<field> f = {}) {
    if (current_level() <= level::debug) {
        emit(level::debug, ev, f);
    }
}
inline void info(std::string_view ev, std::initializer_list<field> f = {}) {
    if (current_level() <= level::info) {
        emit(level::info, ev, f);
    }
}
inline void warn(std::string_view ev, std::initializer_list<field> f = {}) {
    if (current_level() <= level::warn) {
        emit(level::warn, ev, f);
    }
}
inline void error(std::string_view ev, std::initializer_list<field> f = {}) {
    emit(level::error, ev, f);
}

} // namespace apprelay::log
