//! The validating admission webhook: runs `switchboard_crds::validate` on every CallCenter,
//! Queue and Seat the API server is about to store, and denies the request with every broken
//! rule named by its field.

use kube::core::DynamicObject;
use kube::core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview, Operation};
use serde::de::DeserializeOwned;
use switchboard_crds::validate::{self, FieldErrors};
use switchboard_crds::{CallCenterSpec, QueueSpec, SeatSpec};

/// The path the API server posts AdmissionReviews to.
pub const PATH: &str = "/validate";

/// Why a request was denied, for the metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Allowed,
    Denied,
    Malformed,
}

impl Verdict {
    pub fn label(self) -> &'static str {
        match self {
            Verdict::Allowed => "allowed",
            Verdict::Denied => "denied",
            Verdict::Malformed => "malformed",
        }
    }
}

/// Answers one AdmissionReview. Pure: no I/O, so it is tested without a server.
pub fn review(review: AdmissionReview<DynamicObject>) -> (AdmissionReview<DynamicObject>, Verdict) {
    let request: AdmissionRequest<DynamicObject> = match review.try_into() {
        Ok(r) => r,
        Err(e) => {
            return (
                AdmissionResponse::invalid(format!("not an AdmissionReview request: {e}"))
                    .into_review(),
                Verdict::Malformed,
            );
        }
    };
    let response = AdmissionResponse::from(&request);
    if !matches!(request.operation, Operation::Create | Operation::Update) {
        return (response.into_review(), Verdict::Allowed);
    }
    let Some(object) = &request.object else {
        return (response.into_review(), Verdict::Allowed);
    };
    let kind = request.kind.kind.as_str();
    let name = if request.name.is_empty() {
        object.metadata.name.clone().unwrap_or_default()
    } else {
        request.name.clone()
    };
    match check(kind, &name, object) {
        Ok(()) => (response.into_review(), Verdict::Allowed),
        Err(message) => {
            let mut denied = response.deny(format!(
                "{kind}.switchboard.dev {name:?} is invalid: {message}"
            ));
            denied.result.code = 422;
            denied.result.reason = "Invalid".to_string();
            (denied.into_review(), Verdict::Denied)
        }
    }
}

/// The CallCenter a review asks to scale (`namespace`, `name`), when it is a request on the
/// `callcenters/scale` subresource: its answer needs the CallCenter's trunk bounds, which the
/// Scale object does not carry.
pub fn scale_target(review: &AdmissionReview<DynamicObject>) -> Option<(String, String)> {
    let request = review.request.as_ref()?;
    (request.resource.resource == "callcenters"
        && request.sub_resource.as_deref() == Some("scale")
        && matches!(request.operation, Operation::Update))
    .then(|| {
        (
            request.namespace.clone().unwrap_or_default(),
            request.name.clone(),
        )
    })
}

/// Answers a `callcenters/scale` review: the requested `spec.replicas` becomes
/// `spec.trunkChannels` of `center` (as the API server would store it) and must pass the same
/// rules, so a request outside the first trunk's bounds is refused naming them. `center` is
/// the stored CallCenter, or why it could not be read (then the request is refused: the
/// bounds cannot be checked).
pub fn review_scale(
    review: AdmissionReview<DynamicObject>,
    center: Result<switchboard_crds::CallCenter, String>,
) -> (AdmissionReview<DynamicObject>, Verdict) {
    let request: AdmissionRequest<DynamicObject> = match review.try_into() {
        Ok(r) => r,
        Err(e) => {
            return (
                AdmissionResponse::invalid(format!("not an AdmissionReview request: {e}"))
                    .into_review(),
                Verdict::Malformed,
            );
        }
    };
    let response = AdmissionResponse::from(&request);
    let name = request.name.clone();
    let replicas = request
        .object
        .as_ref()
        .and_then(|o| o.data.get("spec")?.get("replicas")?.as_u64());
    let verdict = match (replicas, center) {
        (None, _) => Err("spec.replicas: Required value: the wanted channel limit".to_string()),
        (Some(n), _) if u32::try_from(n).is_err() => Err(format!(
            "spec.replicas: Invalid value: {n}: not a channel limit"
        )),
        (_, Err(reason)) => Err(format!(
            "cannot check the request against the trunk's bounds: {reason}"
        )),
        (Some(n), Ok(center)) => {
            let mut spec = center.spec;
            spec.trunk_channels = u32::try_from(n).ok();
            validate::call_center(&spec)
                .into_result()
                .map_err(|e| e.to_string())
        }
    };
    match verdict {
        Ok(()) => (response.into_review(), Verdict::Allowed),
        Err(message) => {
            let mut denied = response.deny(format!(
                "CallCenter.switchboard.dev {name:?} cannot be scaled: {message}"
            ));
            denied.result.code = 422;
            denied.result.reason = "Invalid".to_string();
            (denied.into_review(), Verdict::Denied)
        }
    }
}

/// Validates the object of one kind; `Err` carries the message for the user.
pub fn check(kind: &str, name: &str, object: &DynamicObject) -> Result<(), String> {
    let spec = object
        .data
        .get("spec")
        .cloned()
        .unwrap_or(serde_json::Value::Null);
    let errors: FieldErrors = match kind {
        "CallCenter" => validate::call_center(&parse::<CallCenterSpec>(spec)?),
        "Queue" => validate::queue(&parse::<QueueSpec>(spec)?, name),
        "Seat" => validate::seat(&parse::<SeatSpec>(spec)?),
        // The webhook is registered only for our kinds; anything else passes untouched.
        _ => FieldErrors::default(),
    };
    errors.into_result().map_err(|e| e.to_string())
}

fn parse<T: DeserializeOwned>(spec: serde_json::Value) -> Result<T, String> {
    serde_json::from_value(spec).map_err(|e| format!("spec: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn admission(kind: &str, spec: serde_json::Value) -> AdmissionReview<DynamicObject> {
        serde_json::from_value(json!({
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "request": {
                "uid": "705ab4f5-6393-11e8-b7cc-42010a800002",
                "kind": {"group": "switchboard.dev", "version": "v1alpha1", "kind": kind},
                "resource": {"group": "switchboard.dev", "version": "v1alpha1", "resource": "x"},
                "requestKind": {"group": "switchboard.dev", "version": "v1alpha1", "kind": kind},
                "requestResource": {"group": "switchboard.dev", "version": "v1alpha1", "resource": "x"},
                "name": "campus",
                "namespace": "college",
                "operation": "CREATE",
                "userInfo": {"username": "admin"},
                "object": {
                    "apiVersion": "switchboard.dev/v1alpha1",
                    "kind": kind,
                    "metadata": {"name": "campus", "namespace": "college"},
                    "spec": spec
                },
                "oldObject": null,
                "dryRun": false,
                "options": {"apiVersion": "meta.k8s.io/v1", "kind": "CreateOptions"}
            }
        }))
        .expect("valid AdmissionReview")
    }

    fn response(r: &AdmissionReview<DynamicObject>) -> &AdmissionResponse {
        r.response.as_ref().expect("a response")
    }

    #[test]
    fn an_inverted_rtp_range_is_denied_naming_the_field() {
        let spec = json!({"sip": {"domain": "cc.example.edu"}, "rtp": {"minPort": 20000, "maxPort": 10000}});
        let (out, verdict) = review(admission("CallCenter", spec));
        let resp = response(&out);
        assert_eq!(verdict, Verdict::Denied);
        assert!(!resp.allowed);
        assert_eq!(resp.uid, "705ab4f5-6393-11e8-b7cc-42010a800002");
        assert!(
            resp.result.message.contains("spec.rtp.maxPort"),
            "{}",
            resp.result.message
        );
        assert!(
            resp.result
                .message
                .starts_with("CallCenter.switchboard.dev \"campus\" is invalid")
        );
    }

    #[test]
    fn a_valid_call_center_is_allowed() {
        let spec = json!({"sip": {"domain": "cc.example.edu"}});
        let (out, verdict) = review(admission("CallCenter", spec));
        assert_eq!(verdict, Verdict::Allowed);
        assert!(response(&out).allowed);
    }

    #[test]
    fn a_queue_overflowing_to_itself_is_denied() {
        let spec = json!({"callCenter": "c", "overflow": [{"afterSeconds": 30, "action": "Queue", "queue": "campus"}]});
        let (out, verdict) = review(admission("Queue", spec));
        assert_eq!(verdict, Verdict::Denied);
        assert!(
            response(&out)
                .result
                .message
                .contains("spec.overflow[0].queue")
        );
    }

    #[test]
    fn a_spec_of_the_wrong_shape_is_denied_not_a_panic() {
        let (out, verdict) = review(admission("Seat", json!({"extension": 7})));
        assert_eq!(verdict, Verdict::Denied);
        assert!(response(&out).result.message.contains("spec:"));
    }

    fn scale_review(replicas: u32) -> AdmissionReview<DynamicObject> {
        serde_json::from_value(json!({
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "request": {
                "uid": "705ab4f5-6393-11e8-b7cc-42010a800003",
                "kind": {"group": "autoscaling", "version": "v1", "kind": "Scale"},
                "resource": {"group": "switchboard.dev", "version": "v1alpha1", "resource": "callcenters"},
                "subResource": "scale",
                "name": "campus",
                "namespace": "college",
                "operation": "UPDATE",
                "userInfo": {"username": "admin"},
                "object": {
                    "apiVersion": "autoscaling/v1",
                    "kind": "Scale",
                    "metadata": {"name": "campus", "namespace": "college"},
                    "spec": {"replicas": replicas}
                },
                "oldObject": {
                    "apiVersion": "autoscaling/v1",
                    "kind": "Scale",
                    "metadata": {"name": "campus", "namespace": "college"},
                    "spec": {"replicas": 0}
                },
                "dryRun": false
            }
        }))
        .expect("valid AdmissionReview")
    }

    fn trunked_center() -> switchboard_crds::CallCenter {
        serde_json::from_value(json!({
            "apiVersion": "switchboard.dev/v1alpha1",
            "kind": "CallCenter",
            "metadata": {"name": "campus", "namespace": "college"},
            "spec": {"sip": {"domain": "cc.example.edu"}, "trunks": [{
                "name": "pstn", "peer": {"host": "192.0.2.10"},
                "channels": {"limit": 10, "minChannels": 5, "maxChannels": 60, "autoscaling": true}
            }]}
        }))
        .expect("a center")
    }

    #[test]
    fn scale_requests_are_checked_against_the_first_trunks_bounds() {
        let review = scale_review(40);
        assert_eq!(
            scale_target(&review),
            Some(("college".to_string(), "campus".to_string()))
        );
        let (_, verdict) = review_scale(review, Ok(trunked_center()));
        assert_eq!(verdict, Verdict::Allowed);
        let (out, verdict) = review_scale(scale_review(61), Ok(trunked_center()));
        assert_eq!(verdict, Verdict::Denied);
        assert_eq!(
            response(&out).result.message,
            "CallCenter.switchboard.dev \"campus\" cannot be scaled: spec.trunkChannels: \
             Invalid value: 61: cannot set the trunk to 61 channels: the limit must stay within \
             minChannels 5 and maxChannels 60 of spec.trunks[0] (pstn)"
        );
        let (_, verdict) = review_scale(scale_review(4), Ok(trunked_center()));
        assert_eq!(verdict, Verdict::Denied);
        // Without the bounds, no scale goes through.
        let (out, verdict) = review_scale(scale_review(40), Err("not found".into()));
        assert_eq!(verdict, Verdict::Denied);
        assert!(response(&out).result.message.contains("not found"));
        // An ordinary CallCenter review is not a scale request.
        assert_eq!(
            scale_target(&admission("CallCenter", json!({"sip": {"domain": "x"}}))),
            None
        );
    }

    #[test]
    fn a_review_without_request_is_malformed() {
        let review: AdmissionReview<DynamicObject> = serde_json::from_value(json!({
            "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview"
        }))
        .expect("parses");
        let (out, verdict) = super::review(review);
        assert_eq!(verdict, Verdict::Malformed);
        assert!(!response(&out).allowed);
    }
}
