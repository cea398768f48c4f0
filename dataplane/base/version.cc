#include "dataplane/base/version.hh"

#include <cstdint>

namespace apprelay {

int compare_versions(std::string_view a, std::string_view b) noexcept {
    // Component by component; a missing component is 0, so "1.2" == "1.2.0".
    while (!a.empty() || !b.empty()) {
        auto take = [](std::string_view& s) {
            uint64_t v = 0;
            std::size_t i = 0;
            for (; i < s.size() && s[i] != '.'; ++i) {
                if (s[i] >= '0' && s[i] <= '9' && v < (UINT64_MAX - 9) / 10) {
                    v = v * 10 + uint64_t(s[i] - '0');
                }
            }
            s.remove_prefix(i < s.size() ? i + 1 : i);
            return v;
        };
        uint64_t x = take(a);
        uint64_t y = take(b);
        if (x != y) {
            return x < y ? -1 : 1;
        }
    }
    return 0;
}

} // namespace apprelay
