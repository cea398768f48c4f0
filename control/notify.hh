#pragma once
// The service manager's readiness protocol (sd_notify(3), for the Type=notify unit
// contrib/systemd/apprelay.service): READY=1 once the listeners are up and the ready file is
// written, RELOADING=1 then READY=1 around a SIGHUP reload, STOPPING=1 when the relay starts to
// drain, and a STATUS= line with each for `systemctl status`. Without $NOTIFY_SOCKET (not run by
// systemd) every call does nothing.
#include <string_view>

namespace apprelay::control::notify {

void ready(std::string_view status);
// With MONOTONIC_USEC, which systemd 253's Type=notify-reload asks for; older managers ignore it.
void reloading(std::string_view status);
void stopping(std::string_view status);
void status(std::string_view status);

} // namespace apprelay::control::notify
