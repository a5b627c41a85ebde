// The operator's rollback on demand in the task lifecycle: from which states it is taken.
#include "guardia/service/task_status.hpp"

#include <doctest/doctest.h>

using namespace guardia::service;

TEST_CASE("task status: operator_rollback from PENDING_PM_VALIDATION, COMPLETED, FAILED_ROLLBACK only") {
    using S = TaskStatus;
    const S statuses[] = {S::created,   S::deploying,    S::pending_pm_validation, S::failed_rollback,
                          S::completed, S::rolling_back, S::rolled_back,           S::rollback_failed};
    for (auto s : statuses) {
        CAPTURE(to_string(s));
        const bool allowed = s == S::pending_pm_validation || s == S::completed || s == S::failed_rollback;
        const auto to = transition(s, TaskEvent::operator_rollback);
        CHECK(to.has_value() == allowed);
        if (to) CHECK(*to == S::rolling_back);
    }
    CHECK(to_string(TaskEvent::operator_rollback) == "operator_rollback");
    // It ends as every rollback does.
    CHECK(transition(S::rolling_back, TaskEvent::rollback_succeeded).value_or(S::created) == S::rolled_back);
    CHECK(transition(S::rolling_back, TaskEvent::rollback_failed).value_or(S::created) == S::rollback_failed);
    // A rolled-back SR is not rolled back twice.
    CHECK_FALSE(transition(S::rolled_back, TaskEvent::operator_rollback).has_value());
    CHECK_FALSE(transition(S::rollback_failed, TaskEvent::operator_rollback).has_value());
}
