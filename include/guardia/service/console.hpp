// The web console's server side (issue 15): its embedded files and the answers for /ui.
//
// Why the service layer and not http: the http layer is a generic server (it knows requests,
// limits and connections, not what a path means); which paths are the console, the security
// headers its pages carry and the files compiled into the binary are the console's policy, and
// the console is a part of the deployment service (its pages call the service's /api). The
// asset table is generated at build time (cmake/embed_files.cmake over src/ui/*).
#pragma once

#include "guardia/http/api_util.hpp"

#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace guardia::service {

struct UiAsset {
    std::string_view name;   // base name in src/ui/, e.g. "app.js"
    std::string_view bytes;  // the file's content, embedded at build time
};

// Every file of src/ui/, sorted by name (generated source, ui_assets.cpp in the build tree).
std::span<const UiAsset> ui_assets();
// The asset of that exact name, or nullptr.
const UiAsset* find_ui_asset(std::string_view name);
// Content-Type by extension: text/html, text/javascript, text/css, image/svg+xml (each with
// charset=utf-8 but svg), application/json; "" for an extension the console does not serve.
std::string_view ui_content_type(std::string_view name);

// The headers every /ui answer carries: the Content-Security-Policy of the console (no inline
// script or style, same-origin fetches only, no framing), nosniff, no referrer, no framing,
// Cache-Control: no-cache.
inline constexpr std::string_view ui_csp =
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";
void add_ui_security_headers(http::Response& res);

// Whether the request's path is the console's (/ui or below); `seg` as path_segments gives it.
bool is_ui_path(const std::vector<std::string>& seg);
// The answer to a static console request (any /ui path but /ui/session): GET or HEAD of /ui is
// 302 to /ui/, of /ui/ is index.html, of /ui/<file> that file; an unknown file is 404, another
// method 405. Public: the files hold no data.
http::Response ui_static_answer(const http::Request& req, const std::vector<std::string>& seg);

}  // namespace guardia::service
