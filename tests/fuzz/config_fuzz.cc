// libFuzzer target: the CONFIG frame body a connector receives from the relay. Whatever the
// bytes, decoding either fails cleanly or yields a config that re-encodes and decodes to itself.
#include "dataplane/tunnel/connector_config.hh"

#include <cstdlib>

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    using namespace apprelay::tunnel;
    auto c = decode_connector_config(std::as_bytes(std::span(data, size)));
    if (!c) {
        return 0;
    }
    std::string again = encode_connector_config(*c);
    auto d = decode_connector_config(std::as_bytes(std::span(again.data(), again.size())));
    if (!d || d->tenant != c->tenant || d->group != c->group || d->backends != c->backends) {
        std::abort();
    }
    for (const auto& b : c->backends) {
        if (!c->allows(b)) {
            std::abort();
        }
    }
    return 0;
}
