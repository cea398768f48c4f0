#pragma once
// Error codes shared by every layer. One enum so results cross module boundaries unchanged.
#include <cstdint>
#include <string_view>

namespace apprelay {

#define APPRELAY_ERRC(X)                                                                           \
    X(ok, "ok")                                                                                    \
    X(again, "would block, try again")                                                             \
    X(closed, "closed by peer")                                                                    \
    X(reset, "reset")                                                                              \
    X(timed_out, "timed out")                                                                      \
    X(invalid_argument, "invalid argument")                                                        \
    X(protocol_error, "protocol error")                                                            \
    X(frame_too_large, "frame too large")                                                          \
    X(flow_control, "flow control violation")                                                      \
    X(stream_limit, "stream limit reached")                                                        \
    X(no_memory, "out of memory or pool exhausted")                                                \
    X(not_found, "not found")                                                                      \
    X(not_supported, "not supported")                                                              \
    X(tls_error, "TLS error")                                                                      \
    X(cert_rejected, "certificate rejected")                                                       \
    X(io_error, "I/O error")                                                                       \
    X(refused, "refused")                                                                          \
    X(unreachable, "unreachable")                                                                  \
    X(no_connector, "no connector available")                                                      \
    X(unknown_app, "unknown application")                                                          \
    X(not_allowed, "not allowed")                                                                  \
    X(overloaded, "overloaded")                                                                    \
    X(shutting_down, "shutting down")

enum class errc : uint16_t {
#define APPRELAY_ERRC_ENUM(name, text) name,
    APPRELAY_ERRC(APPRELAY_ERRC_ENUM)
#undef APPRELAY_ERRC_ENUM
};

constexpr std::string_view to_string(errc e) noexcept {
    switch (e) {
#define APPRELAY_ERRC_CASE(name, text)                                                             \
    case errc::name:                                                                               \
        return text;
        APPRELAY_ERRC(APPRELAY_ERRC_CASE)
#undef APPRELAY_ERRC_CASE
    }
    return "unknown error";
}

constexpr std::string_view name_of(errc e) noexcept {
    switch (e) {
#define APPRELAY_ERRC_NAME(name, text)                                                             \
    case errc::name:                                                                               \
        return #name;
        APPRELAY_ERRC(APPRELAY_ERRC_NAME)
#undef APPRELAY_ERRC_NAME
    }
    return "unknown";
}

} // namespace apprelay
