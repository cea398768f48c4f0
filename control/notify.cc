#include "control/notify.hh"

#include "dataplane/base/log.hh"

#include <cstdint>
#include <fmt/format.h>
#include <string>
#include <systemd/sd-daemon.h>
#include <time.h>

namespace apprelay::control::notify {
namespace {

// STATUS= is one line: a newline would start another assignment.
std::string one_line(std::string_view s) {
    std::string out(s);
    for (char& c : out) {
        if (c == '\n' || c == '\r') {
            c = ' ';
        }
    }
    return out;
}

void send(const std::string& message) {
    // 0: not under a service manager ($NOTIFY_SOCKET unset), nothing to tell.
    const int rc = sd_notify(0, message.c_str());
    if (rc < 0) {
        log::warn("notify_failed",
                  {{"message", message.substr(0, message.find('\n'))}, {"errno", -rc}});
    }
}

} // namespace

void ready(std::string_view status) {
    send(fmt::format("READY=1\nSTATUS={}", one_line(status)));
}

void reloading(std::string_view status) {
    timespec ts{};
    ::clock_gettime(CLOCK_MONOTONIC, &ts);
    const uint64_t usec = uint64_t(ts.tv_sec) * 1'000'000u + uint64_t(ts.tv_nsec) / 1000u;
    send(fmt::format("RELOADING=1\nMONOTONIC_USEC={}\nSTATUS={}", usec, one_line(status)));
}

void stopping(std::string_view status) {
    send(fmt::format("STOPPING=1\nSTATUS={}", one_line(status)));
}

void status(std::string_view status) {
    send(fmt::format("STATUS={}", one_line(status)));
}

} // namespace apprelay::control::notify
