// A task's lifecycle (the tasks table's status column) as a closed vocabulary with one
// transition table. Pure; turned into strings only at the store and JSON boundary.
//
//   CREATED --trigger--> DEPLOYING --rollout_succeeded--> PENDING_PM_VALIDATION
//   FAILED_ROLLBACK --trigger--^    \--rollout_failed--> FAILED_ROLLBACK
//   PENDING_PM_VALIDATION --accept--> COMPLETED
//                         --reject--> ROLLING_BACK --rollback_succeeded--> ROLLED_BACK
//                                                  --rollback_failed--> ROLLBACK_FAILED
//   PENDING_PM_VALIDATION, COMPLETED, FAILED_ROLLBACK --operator_rollback--> ROLLING_BACK
#pragma once

#include <optional>
#include <string_view>

namespace guardia::service {

enum class TaskStatus {
    created,
    deploying,
    pending_pm_validation,
    failed_rollback,
    completed,
    rolling_back,
    rolled_back,
    rollback_failed,
};

enum class TaskEvent {
    trigger,             // an approver's trigger started a rollout
    rollout_succeeded,   // every node deployed and healthy: the PM decides
    rollout_failed,      // the gate tripped, the rollout was cancelled, or it was interrupted
    accept,              // the PM accepted the release
    reject,              // the PM rejected it: every node it deployed is rolled back
    rollback_succeeded,  // every such node is back on its build before the SR
    rollback_failed,     // at least one node could not be (or was refused to be) rolled back
    operator_rollback,   // an operator asked to roll the SR's deployed nodes back (any time after
                         // its rollout ran: awaiting the PM, accepted, or failed part-way)
};

std::string_view to_string(TaskStatus status) noexcept;  // "PENDING_PM_VALIDATION", ...
std::optional<TaskStatus> parse_task_status(std::string_view text) noexcept;
std::string_view to_string(TaskEvent event) noexcept;  // "trigger", ...

// The status `event` leads to from `from`; nullopt when the event is not allowed there.
std::optional<TaskStatus> transition(TaskStatus from, TaskEvent event) noexcept;

// Artifacts may be (re-)staged only before a rollout or after a failed one.
bool can_stage(TaskStatus status) noexcept;
// No further rollout or verdict applies (COMPLETED, ROLLED_BACK, ROLLBACK_FAILED); COMPLETED
// still allows an operator_rollback.
bool is_final(TaskStatus status) noexcept;

}  // namespace guardia::service
