// What can go wrong with a request to the service, as a closed vocabulary. The coordinator
// (coordinator.hpp) answers with these; the API layer maps each to one HTTP status and error
// code (api_routes.cpp), so no decision about HTTP lives in the task logic.
#pragma once

#include <boost/json/object.hpp>
#include <boost/system/result.hpp>

#include <string>
#include <string_view>

namespace guardia::service {

enum class ServiceErrc {
    bad_request,             // a field is missing or malformed (the message names it)
    forbidden,               // the client's roles do not include the one the route needs
    self_approval,           // the approver is the requester
    four_eyes,               // the PM verdict comes from the requester or the approver
    not_found,               // no such task
    conflict,                // the task's state does not allow this now
    node_claimed,            // another SR's release is on (or going to) some of the nodes
    approval_mismatch,       // the approved artifact set is not what is staged
    checksum_mismatch,       // staged bytes do not have the announced sha256
    idempotency_key_reused,  // the key was used for another request
    path_form_disabled,      // the path form is off (service.drop_dir not set)
    path_refused,            // the path form names a file the service may not read
    payload_too_large,       // the path form's file is over service.max_artifact_bytes
    local_io_failed,         // the deploy host's own files could not be written
    store_unavailable,       // the store could not be read or written
    stopping,                // the service is draining: no new work
    no_rollout_in_flight,    // pause/resume/abort: the SR has no rollout running
    control_refused,         // pause/resume/abort: the rollout's state does not allow it
    approval_needs_validate,  // resume of a tier gate by a client without the role validate
};

// The API's error code: "bad_request", "node_claimed", ... (docs/API.md).
std::string_view to_string(ServiceErrc code) noexcept;

struct ServiceError {
    ServiceError() {}
    ServiceError(ServiceErrc c, std::string m) : code(c), message(std::move(m)) {}
    ServiceErrc code = ServiceErrc::bad_request;
    std::string message;         // for people: names the task, field, nodes
    boost::json::object details;  // extra fields of the error answer (e.g. claimed nodes)
};

[[noreturn]] void throw_exception_from_error(const ServiceError& e,
                                             const boost::source_location& loc);

template <class T>
using ServiceResult = boost::system::result<T, ServiceError>;

}  // namespace guardia::service
