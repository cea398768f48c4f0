#pragma once
// The admin API's request/response as plain values: the HTTP transport (control/admin/) fills a
// request and sends back the response; the routes (control/api/) never see the transport.
#include <string>
#include <utility>
#include <vector>

namespace apprelay::control {

struct http_request {
    std::string method;   // "GET", "POST", "PATCH", "DELETE"
    std::string path;     // "/v1/tenants/contoso/groups" (percent-decoded, no query)
    std::vector<std::pair<std::string, std::string>> query; // decoded key/value pairs
    std::string body;     // raw request body (JSON for POST/PATCH)
};

struct http_response {
    int status = 200;
    std::string content_type = "application/json";
    std::string body;
    std::vector<std::pair<std::string, std::string>> headers{}; // extra headers (name, value)
};

} // namespace apprelay::control
