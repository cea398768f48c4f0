#pragma once
// Dotted numeric versions ("0.10.2"), as connectors report them in HELLO and update manifests
// carry them (dataplane/connector/UPDATE.md).
#include <string_view>

namespace apprelay {

// -1, 0, 1 comparing dotted numeric versions ("0.10.2" > "0.9"); a non-numeric part compares as 0.
int compare_versions(std::string_view a, std::string_view b) noexcept;

} // namespace apprelay
