// --limit, --tier and --retry-failed for `guardia deploy` and `guardia exec`: the flags, the
// store look-up for --retry-failed, and the audit event that records the selection. The
// decision itself is guardia/deploy/targeting.hpp.
#pragma once

#include "cli.hpp"

#include "guardia/deploy/targeting.hpp"
#include "guardia/store/audit_writer.hpp"

#include <string>

namespace guardia::cli {


struct Targeting {
    deploy::TargetFilter filter;
    std::string description;  // describe_selection(), once applied
};

// Reads one targeting flag; false if `flag` is not one of them. Bad values throw UsageError.
bool targeting_flag(const std::string& flag, Args& args, Targeting& t);


// Narrows engine.inventory to the selection (reading --retry-failed's rollout from `db`).
// Throws UsageError naming the culprit (a pattern, a tier, an unknown rollout, a database).
// False: --retry-failed left nothing to retry (the caller says so and exits 0).
bool apply_targeting(Targeting& t, Engine& engine, const std::string& db);

// Says that --retry-failed left nothing to retry (stderr; with --json also the document
// {"retry_failed": ID, "nothing_to_retry": true, "nodes": []} on stdout). Returns exit code 0.
int nothing_to_retry(const Targeting& t, const char* command, bool as_json);

// A ROLLOUT_TARGET audit event for the rollout / exec run `run_id` (only when a filter was
// given: an untargeted run touches the whole inventory).
void record_targeting(const Targeting& t, store::AuditWriter& audit, const std::string& sr_id,
                      const std::string& run_id);

}  // namespace guardia::cli
