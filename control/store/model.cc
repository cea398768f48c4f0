#include "control/store/model.hh"

#include "control/store/store.hh"

namespace apprelay::control {

std::string_view to_string(connector_status s) noexcept {
    return s == connector_status::active ? "active" : "inactive";
}

std::string_view to_string(access_mode a) noexcept {
    return a == access_mode::user_cert ? "user-cert" : "passthrough";
}

std::string_view to_string(token_state s) noexcept {
    switch (s) {
    case token_state::valid:
        return "valid";
    case token_state::used:
        return "used";
    case token_state::expired:
        return "expired";
    case token_state::revoked:
        return "revoked";
    }
    return "unknown";
}

int http_status_of(store_error::kind k) noexcept {
    switch (k) {
    case store_error::kind::invalid:
        return 400;
    case store_error::kind::not_found:
        return 404;
    case store_error::kind::conflict:
        return 409;
    case store_error::kind::refused:
        return 422;
    case store_error::kind::internal:
        return 500;
    case store_error::kind::unavailable:
        return 503;
    }
    return 500;
}

} // namespace apprelay::control
