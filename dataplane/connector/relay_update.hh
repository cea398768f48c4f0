#pragma once
// The updater's requests to the relay (UPDATE.md "Turns" and "From the relay"), made with the
// connector's own certificate on the relay's enrollment listener (enroll.hh connector_request).
// CLI code: blocking, allocating, logging each step (component `updater`).
#include "dataplane/base/result.hh"
#include "dataplane/connector/enroll.hh"

#include <cstdint>
#include <string>

namespace apprelay::connector {

// Asks for the group's update turn until the relay grants it or timeout_s passes; returns the
// lease in seconds. While another connector of the group updates, or one of the group's others
// has no tunnel, the relay refuses with a reason and a delay: each is logged (`turn_wait`) and
// asked again. A relay that does not know the connector, or does not grant turns at all, ends
// the wait at once (errc::refused, *why says which).
result<uint32_t> wait_for_turn(const state& st, const std::string& version, uint32_t timeout_s,
                               std::string* why);

// Downloads the package the relay serves ([connectors] update_package) into out_dir (created
// 0700; manifest.json, manifest.sig, apprelay-connector), 1 MiB per request. Nothing in it is
// trusted: the caller verifies it like any package. Returns the version the relay advertised.
// When the relay's package is not newer than `running_version`, nothing is downloaded and
// *up_to_date is set.
result<std::string> fetch_relay_package(const state& st, const std::string& out_dir,
                                        const std::string& running_version, bool* up_to_date,
                                        std::string* why);

} // namespace apprelay::connector
