#include "guardia/service/task_status.hpp"

#include <array>
#include <utility>

namespace guardia::service {

namespace {

constexpr std::array<std::pair<TaskStatus, std::string_view>, 8> status_names{{
    {TaskStatus::created, "CREATED"},
    {TaskStatus::deploying, "DEPLOYING"},
    {TaskStatus::pending_pm_validation, "PENDING_PM_VALIDATION"},
    {TaskStatus::failed_rollback, "FAILED_ROLLBACK"},
    {TaskStatus::completed, "COMPLETED"},
    {TaskStatus::rolling_back, "ROLLING_BACK"},
    {TaskStatus::rolled_back, "ROLLED_BACK"},
    {TaskStatus::rollback_failed, "ROLLBACK_FAILED"},
}};

struct Transition {
    TaskStatus from;
    TaskEvent event;
    TaskStatus to;
};

// The whole lifecycle: anything not listed is refused.
constexpr std::array<Transition, 11> table{{
    {TaskStatus::created, TaskEvent::trigger, TaskStatus::deploying},
    {TaskStatus::failed_rollback, TaskEvent::trigger, TaskStatus::deploying},
    {TaskStatus::deploying, TaskEvent::rollout_succeeded, TaskStatus::pending_pm_validation},
    {TaskStatus::deploying, TaskEvent::rollout_failed, TaskStatus::failed_rollback},
    {TaskStatus::pending_pm_validation, TaskEvent::accept, TaskStatus::completed},
    {TaskStatus::pending_pm_validation, TaskEvent::reject, TaskStatus::rolling_back},
    // An operator's rollback on demand: before or after the PM's verdict, or after a rollout
    // that failed having deployed some nodes.
    {TaskStatus::pending_pm_validation, TaskEvent::operator_rollback, TaskStatus::rolling_back},
    {TaskStatus::completed, TaskEvent::operator_rollback, TaskStatus::rolling_back},
    {TaskStatus::failed_rollback, TaskEvent::operator_rollback, TaskStatus::rolling_back},
    {TaskStatus::rolling_back, TaskEvent::rollback_succeeded, TaskStatus::rolled_back},
    {TaskStatus::rolling_back, TaskEvent::rollback_failed, TaskStatus::rollback_failed},
}};

}  // namespace

std::string_view to_string(TaskStatus status) noexcept {
    for (const auto& [s, name] : status_names)
        if (s == status) return name;
    return "UNKNOWN";
}

std::optional<TaskStatus> parse_task_status(std::string_view text) noexcept {
    for (const auto& [s, name] : status_names)
        if (name == text) return s;
    return std::nullopt;
}

std::string_view to_string(TaskEvent event) noexcept {
    switch (event) {
        case TaskEvent::trigger:
            return "trigger";
        case TaskEvent::rollout_succeeded:
            return "rollout_succeeded";
        case TaskEvent::rollout_failed:
            return "rollout_failed";
        case TaskEvent::accept:
            return "accept";
        case TaskEvent::reject:
            return "reject";
        case TaskEvent::rollback_succeeded:
            return "rollback_succeeded";
        case TaskEvent::rollback_failed:
            return "rollback_failed";
        case TaskEvent::operator_rollback:
            return "operator_rollback";
    }
    return "unknown";
}

std::optional<TaskStatus> transition(TaskStatus from, TaskEvent event) noexcept {
    for (const auto& t : table)
        if (t.from == from && t.event == event) return t.to;
    return std::nullopt;
}

bool can_stage(TaskStatus status) noexcept {
    return status == TaskStatus::created || status == TaskStatus::failed_rollback;
}

bool is_final(TaskStatus status) noexcept {
    return status == TaskStatus::completed || status == TaskStatus::rolled_back ||
           status == TaskStatus::rollback_failed;
}

}  // namespace guardia::service
