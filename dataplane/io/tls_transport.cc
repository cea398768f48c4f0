#include "dataplane/io/tls_transport.hh"

#include <algorithm>

namespace apprelay::io {

void tls_transport::rebind(io::loop* l, conn_id id, send_buffer_pool* pool) {
    _in_flight = 0;
    _loop = l;
    _id = id;
    _tls->use_chunk_pool(pool);
}

void tls_transport::flush() {
    if (_in_flight != 0) {
        return;
    }
    auto out = _tls->pending_output();
    if (out.empty()) {
        return;
    }
    if (!_loop->send(_id, out)) {
        // Stale id: the connection is closing anyway; its output goes nowhere.
        _tls->consume_output(_tls->pending_output_size());
        return;
    }
    _in_flight = out.size();
}

bool tls_transport::on_sent(int res) {
    if (_in_flight == 0) {
        return res >= 0;
    }
    if (res < 0) {
        _in_flight = 0;
        return false;
    }
    // MSG_WAITALL makes short sends rare; the rest goes out with the next send, together with
    // whatever the session appended to the chunk meanwhile.
    _tls->consume_output(std::min(std::size_t(res), _in_flight));
    _in_flight = 0;
    flush();
    return true;
}

} // namespace apprelay::io
