// The rules that make an approval mean something (pure; the coordinator applies them):
//  - identities (requester, approver, PM) are compared normalised: surrounding whitespace
//    dropped, ASCII letters lower-cased ("  Alice " is "alice"); other bytes compare exactly;
//  - the approver may not be the requester (service.forbid_self_approval);
//  - the PM verdict may come from neither the requester nor the approver (service.four_eyes);
//  - a trigger approves the exact set of staged artifacts (name -> sha256); when the trigger
//    names the set it saw, the staged set must be exactly that.
#pragma once

#include "guardia/service/service_error.hpp"

#include <boost/json/object.hpp>

#include <map>
#include <string>
#include <string_view>
#include <vector>

namespace guardia::service {

std::string normalize_identity(std::string_view id);
// Both non-empty once normalised, and equal.
bool same_identity(std::string_view a, std::string_view b);

// An identity field (requester, approver_id, pm_id): not blank, at most 256 bytes, no control
// character inside it. bad_request naming `field`.
ServiceResult<void> check_identity(std::string_view field, std::string_view id);

ServiceResult<void> check_approver(std::string_view requester, std::string_view approver,
                                   bool forbid_self_approval);
// `approvers`: everyone who approved (triggered) this SR so far; the PM may be none of them.
ServiceResult<void> check_verdict_author(std::string_view pm, std::string_view requester,
                                         const std::vector<std::string>& approvers,
                                         bool four_eyes);

using ArtifactSet = std::map<std::string, std::string>;  // name -> sha256 (lower-case hex)

// The trigger's optional "artifacts" field ({name: sha256}) against what is staged: equal, or
// approval_mismatch naming each difference.
ServiceResult<void> check_expected_set(const ArtifactSet& expected, const ArtifactSet& staged);

boost::json::object to_json(const ArtifactSet& set);
// From a stored or requested JSON object; bad_request naming `field` for anything but
// {"name": "<64 hex>"} entries.
ServiceResult<ArtifactSet> artifact_set_from_json(const boost::json::value& v,
                                                  std::string_view field);

}  // namespace guardia::service
