// Failpoints: the crash-recovery tests kill the process at a named point of a node's pipeline.
//
// Compiled only into test builds (CMake option GUARDIA_FAILPOINTS, refused for Release): there
// hit() reads GUARDIA_FAILPOINT once, e.g. "after:LOCK@node-0003" (the node is optional: any
// node), and at the first matching point prints one line to stderr and sends itself SIGKILL,
// exactly what a kill -9 or an OOM kill would do there. In every other build hit() is an empty
// inline function and the variable is ignored.
//
// Points: "before" a remote step is after its intent row is committed and before anything is
// sent; "after" is as soon as the node has answered, before the outcome is recorded; "mid" is
// inside a transfer, once about half of the artifact is on its way.
//
// Pauses: GUARDIA_FAILPOINT_PAUSE="<POINT>:<ms>" makes pause_at(POINT) return that delay (the
// caller waits it out on its timer, never blocking the loop), to hold a race window open for a
// test. Only in test builds too; elsewhere pause_at() returns zero.
#pragma once

#include <chrono>
#include <optional>
#include <string>
#include <string_view>

namespace guardia::failpoint {

enum class When { before, after, mid };

struct Spec {
    When when = When::before;
    std::string step;  // e.g. "LOCK"
    std::string node;  // empty: any node
};

// Parses "<before|after|mid>:<STEP>[@<node>]"; nullopt for anything else. Pure.
std::optional<Spec> parse(std::string_view text);
// Whether `spec` names this point. Pure.
bool matches(const Spec& spec, When when, std::string_view step, std::string_view node);

struct Pause {
    std::string point;  // e.g. "WORK_FINISH"
    std::chrono::milliseconds delay{0};
};
// Parses "<POINT>:<ms>" (POINT in A-Z and _, ms 1..600000); nullopt for anything else. Pure.
std::optional<Pause> parse_pause(std::string_view text);

#ifdef GUARDIA_FAILPOINTS
inline constexpr bool enabled = true;
void hit(When when, std::string_view step, std::string_view node);
std::chrono::milliseconds pause_at(std::string_view point);
#else
inline constexpr bool enabled = false;
inline void hit(When, std::string_view, std::string_view) noexcept {}
inline std::chrono::milliseconds pause_at(std::string_view) noexcept {
    return std::chrono::milliseconds(0);
}
#endif

}  // namespace guardia::failpoint
