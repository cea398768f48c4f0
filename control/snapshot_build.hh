#pragma once
// Store view -> what the workers read: the immutable snapshot (routing tables, limits, CONFIG
// bodies) and the TLS contexts (SNI -> app certificates; tunnel mutual TLS against every tenant
// CA). Control thread only; may allocate, may fail with a message naming the object.
#include "control/settings.hh"
#include "control/store/model.hh"
#include "dataplane/relay/worker.hh"

#include <memory>
#include <string>

namespace apprelay::control {

// PEM text is handed to OpenSSL through files under `pem_dir` named by the SHA-256 of their
// content (keys 0600), so rebuilding an unchanged configuration writes nothing.
result<std::unique_ptr<relay::relay_config>> build_relay_config(const store_view& view,
                                                                const relay_settings& settings,
                                                                const std::string& pem_dir,
                                                                std::string* why);

// Writes `pem` to `dir/<sha256>.pem` unless present; returns the path.
result<std::string> pem_file(const std::string& dir, const std::string& pem, bool secret,
                             std::string* why);

} // namespace apprelay::control
