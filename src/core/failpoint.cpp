#include "guardia/core/failpoint.hpp"

#include <signal.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>

namespace guardia::failpoint {

std::optional<Spec> parse(std::string_view text) {
    const auto colon = text.find(':');
    if (colon == std::string_view::npos) return std::nullopt;
    Spec s;
    const auto when = text.substr(0, colon);
    if (when == "before")
        s.when = When::before;
    else if (when == "after")
        s.when = When::after;
    else if (when == "mid")
        s.when = When::mid;
    else
        return std::nullopt;
    auto rest = text.substr(colon + 1);
    const auto at = rest.find('@');
    s.step = std::string(rest.substr(0, at));
    if (at != std::string_view::npos) {
        s.node = std::string(rest.substr(at + 1));
        if (s.node.empty()) return std::nullopt;
    }
    if (s.step.empty()) return std::nullopt;
    for (char c : s.step)
        if (!((c >= 'A' && c <= 'Z') || c == '_')) return std::nullopt;
    return s;
}

bool matches(const Spec& spec, When when, std::string_view step, std::string_view node) {
    return spec.when == when && spec.step == step && (spec.node.empty() || spec.node == node);
}

std::optional<Pause> parse_pause(std::string_view text) {
    const auto colon = text.find(':');
    if (colon == std::string_view::npos || colon == 0) return std::nullopt;
    Pause p;
    p.point = std::string(text.substr(0, colon));
    for (char c : p.point)
        if (!((c >= 'A' && c <= 'Z') || c == '_')) return std::nullopt;
    const auto digits = text.substr(colon + 1);
    if (digits.empty() || digits.size() > 6) return std::nullopt;
    long ms = 0;
    for (char c : digits) {
        if (c < '0' || c > '9') return std::nullopt;
        ms = ms * 10 + (c - '0');
    }
    if (ms < 1 || ms > 600000) return std::nullopt;
    p.delay = std::chrono::milliseconds(ms);
    return p;
}

#ifdef GUARDIA_FAILPOINTS
namespace {

const char* name_of(When w) {
    switch (w) {
        case When::before: return "before";
        case When::after: return "after";
        case When::mid: return "mid";
    }
    return "?";
}

// Read once: the variable is set when the process starts and never changes.
const std::optional<Spec>& armed() {
    static const std::optional<Spec> spec = [] {
        const char* text = std::getenv("GUARDIA_FAILPOINT");
        if (text == nullptr || *text == '\0') return std::optional<Spec>();
        auto s = parse(text);
        if (!s)
            std::fprintf(stderr,
                         "guardia: GUARDIA_FAILPOINT='%s' is not <before|after|mid>:<STEP>[@<node>]: "
                         "no failpoint armed\n",
                         text);
        return s;
    }();
    return spec;
}

}  // namespace

std::chrono::milliseconds pause_at(std::string_view point) {
    static const std::optional<Pause> pause = [] {
        const char* text = std::getenv("GUARDIA_FAILPOINT_PAUSE");
        if (text == nullptr || *text == '\0') return std::optional<Pause>();
        auto p = parse_pause(text);
        if (!p)
            std::fprintf(stderr,
                         "guardia: GUARDIA_FAILPOINT_PAUSE='%s' is not <POINT>:<ms>: no pause "
                         "armed\n",
                         text);
        return p;
    }();
    if (!pause || pause->point != point) return std::chrono::milliseconds(0);
    return pause->delay;
}

void hit(When when, std::string_view step, std::string_view node) {
    const auto& spec = armed();
    if (!spec || !matches(*spec, when, step, node)) return;
    std::fprintf(stderr, "guardia: failpoint %s:%.*s@%.*s: SIGKILL\n", name_of(when),
                 static_cast<int>(step.size()), step.data(), static_cast<int>(node.size()),
                 node.data());
    std::fflush(stderr);
    ::kill(::getpid(), SIGKILL);
    ::pause();  // SIGKILL cannot be caught: never returns
}
#endif

}  // namespace guardia::failpoint
