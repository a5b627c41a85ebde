#include "guardia/service/console.hpp"

#include "guardia/core/json_input.hpp"

#include <algorithm>

namespace guardia::service {

namespace bh = boost::beast::http;

const UiAsset* find_ui_asset(std::string_view name) {
    const auto assets = ui_assets();
    const auto it = std::find_if(assets.begin(), assets.end(),
                                 [&](const UiAsset& a) { return a.name == name; });
    return it == assets.end() ? nullptr : &*it;
}

std::string_view ui_content_type(std::string_view name) {
    const auto dot = name.rfind('.');
    if (dot == std::string_view::npos) return {};
    const auto ext = name.substr(dot + 1);
    if (ext == "html") return "text/html; charset=utf-8";
    if (ext == "js") return "text/javascript; charset=utf-8";
    if (ext == "css") return "text/css; charset=utf-8";
    if (ext == "svg") return "image/svg+xml";
    if (ext == "json") return "application/json";
    return {};
}

void add_ui_security_headers(http::Response& res) {
    res.set("Content-Security-Policy", ui_csp);
    res.set("X-Content-Type-Options", "nosniff");
    res.set("Referrer-Policy", "no-referrer");
    res.set("X-Frame-Options", "DENY");
    res.set(bh::field::cache_control, "no-cache");
}

bool is_ui_path(const std::vector<std::string>& seg) {
    return !seg.empty() && seg[0] == "ui";
}

http::Response ui_static_answer(const http::Request& req, const std::vector<std::string>& seg) {
    http::Response res;
    const std::string_view target = req.target();
    const std::string_view path = target.substr(0, target.find('?'));
    if (req.method() != bh::verb::get && req.method() != bh::verb::head) {
        res = http::error_response(req, bh::status::method_not_allowed, "method_not_allowed",
                                   "use GET, HEAD on this path");
        res.set(bh::field::allow, "GET, HEAD");
    } else if (seg.size() == 1 && path == "/ui") {
        res = http::text_response(req, bh::status::found, "", "text/plain; charset=utf-8");
        res.set(bh::field::location, "/ui/");
    } else if (seg.size() > 2) {
        res = http::error_response(req, bh::status::not_found, "not_found",
                                   "no such console file: " + printable(path));
    } else {
        const std::string name = seg.size() == 1 ? std::string("index.html") : seg[1];
        const UiAsset* asset = find_ui_asset(name);
        const std::string_view type = ui_content_type(name);
        if (!asset || type.empty())
            res = http::error_response(req, bh::status::not_found, "not_found",
                                       "no such console file: " + printable(path));
        else
            res = http::text_response(req, bh::status::ok, std::string(asset->bytes), type);
    }
    add_ui_security_headers(res);
    return res;
}

}  // namespace guardia::service
