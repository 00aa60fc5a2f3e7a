"""Planned runners of Part 3 (failure scenarios, spec 3.1-3.6); cases in hybrid_assets/catalog/cases/part3.yaml.

device.disconnection_failover: 3.1 primary_device_sudden_disconnection. Simulated devices in one worker (sim:gpu0
    the primary) under a journalled background load through the host's DeviceRouter; at the case's
    disconnection_timing (primary idle, running an inference, loading a model) disconnect the primary with the
    runtime's own disconnection_method (hardware disconnect, driver failure, power failure), time detection (the
    router learning it) and failover initiation (work addressed to the primary sent to a secondary), check the
    promotion of a secondary, the in-flight result re-run elsewhere, work conservation after failover (status
    polls), leaks, then reconnect the device and check it serves again unaided; one sample per injection.
device.cascading_failures: 3.1 cascading_device_failures. 20 simulated devices; disconnect the primary then
    secondaries (hardware disconnect) until each of the case's failure_percentages is reached, at once or one every
    time_between_failures_s x time_scale; at each level probe the basic operations (the CPU is never failed), check
    no work goes to a device after its failure was detected, no survivor fails from overload, the reported device
    status matches reality and every error is explained; samples labelled by level.
memory.gradual_exhaustion: 3.2 gradual_memory_exhaustion. Drive the managed memory (the device, or the worker's
    memory_limit_mb) from 70 % to 99 % at 5 %/min x time_scale, steady, accelerating (same average) or in 5-point
    steps once a minute; record the utilization at which warning, cleanup, degraded mode and emergency cleanup are
    first observed (1.0 when one never is).
memory.sudden_spike: 3.2 sudden_memory_spike. From 60 % utilization, add 30 % within 10 s x time_scale by the case's
    spike_trigger (a large model load, a leaking allocation that stays, an allocation storm); time the system's
    alert and its recovery to <= 85 % with a probe succeeding, count lost workers and lost requests, probe liveness
    throughout; one sample per spike.
model.cache_corruption_recovery: 3.3 cache_corruption_detection. Corrupt cached models by corruption_type (partial
    file, metadata, checksum) at corruption_timing (while loading, at rest in the cache, in the cache-to-device
    transfer) at each severity (minor: one flipped bit of tensor data; significant: whole tensors or the header;
    complete: every byte); time detection from the first read, record whether significant/complete corruption is
    caught before serving, whether requests fail over to a backup or alternative model, whether the cache is rebuilt
    from source and integrity-checked before use; with no corruption, count integrity checks of clean models that
    report corruption (clean_model_corruption_detected).
model.vram_corruption_recovery: 3.3 vram_model_corruption. With two models resident on the device, corrupt one in
    device memory (a bit flip in its weights, a reported device memory error, a corrupted cache-to-device transfer)
    with one detection_method enabled at a time; check the other model keeps serving, the corrupted copy serves
    nothing after detection, it is reloaded from the clean cache and verified before serving again.
processing.worker_crash_recovery: 3.4 worker_process_crash. Crash a worker holding a session by crash_trigger
    (SIGSEGV, an uncaught error via protocol_crash, OOM kill via sigkill) at crash_timing (before its handshake,
    mid-request, during session cleanup), once per stable period (single), again as soon as each replacement is
    ready (repeated) or through every worker of the pool via a shared cause such as an idempotent poison request
    (cascade); run the fault experiment (journal, detection, recovery, resource snapshot) and compare the session's
    state and reported partial results before and after; one sample per crash.
processing.session_state_corruption: 3.4 session_state_corruption. Corrupt a live session's state (partial loss,
    inconsistent fields, complete corruption) through each corruption_cause (racing concurrent writers, a damaged
    serialized checkpoint, a failing state store); count operations that complete on the corrupt state before it is
    flagged, record whether the system detects it and whether the state it recovers equals the runner's reference
    (reconstruction) or the last consistent checkpoint with the rollback reported.
inference.execution_timeout: 3.5 inference_execution_timeout. Submit inferences of the case's operation_complexity
    made to overrun timeout_threshold_s x time_scale by the case's timeout_cause (long complex prompts, competing
    load, a slowed model via --fault-latency); measure the timeout's delay after the deadline, premature timeouts,
    the resource snapshot and still-running work after the timeout, the timeout error's code, message and options,
    and the automatic retry with reduced complexity; one sample per timeout.
inference.batch_timeout_recovery: 3.5 batch_operation_timeout. Run batches of each batch size with the deadline at
    the case's timeout point (one item's own timeout, the batch's overall deadline, a resource allocation that times
    out after the batch lost its resources) set to expire mid-batch; check completed items' outputs survive, a
    restart resumes after the last completed item and does each remaining item once, and nothing of the batch is
    left running or held; one sample per timed-out batch.
postprocessing.safety_validation_failure: 3.6 safety_validation_failure. Break safety validation by
    validation_failure (the classifier model fails, the policy engine crashes, validation hangs past its deadline)
    with the case's impact (one item, a whole batch, every item); check each affected item is classified
    conservatively and escalated to manual review, and every operation outside the failure's scope (other items,
    batches, other postprocessing) still succeeds.
postprocessing.enhancement_failure_recovery: 3.6 enhancement_processing_failure. With the case's failure_recovery
    path configured, make each enhancement stage fail (upscaler, quality enhancer crash, format conversion error) on
    inputs downscaled from known references; check every delivered output went through output validation and decodes
    as declared, its PSNR against the reference is not below the original's (plain resize), and its result reports
    the failed stage and the fallback used.
"""

from __future__ import annotations

PLANNED: dict[str, frozenset[str]] = {
    "device.disconnection_failover": frozenset({
        "detection_s", "failover_initiation_s", "recovery_s", "secondary_request_error", "lost_requests_count",
        "in_flight_result_missing_count", "secondary_promoted_ok", "idle_while_backlogged_count",
        "device_reintegrated_ok", "reintegration_s", "leaked_resource_count",
    }),
    "device.cascading_failures": frozenset({
        "detection_s", "basic_probe_ok", "lost_requests_count", "dispatch_to_failed_device_count",
        "survivor_overload_failure_count", "status_mismatch_count", "unexplained_error_count",
        "remaining_capacity_ratio", "leaked_resource_count",
    }),
    "memory.gradual_exhaustion": frozenset({
        "warning_activation_utilization_ratio", "cleanup_activation_utilization_ratio",
        "degraded_mode_activation_utilization_ratio", "emergency_cleanup_activation_utilization_ratio",
        "peak_utilization_ratio", "lost_requests_count", "worker_lost_count",
    }),
    "memory.sudden_spike": frozenset({
        "spike_detection_s", "emergency_recovery_s", "worker_lost_count", "liveness_probe_ok",
        "lost_requests_count", "peak_utilization_ratio", "rejected_request_count",
    }),
    "model.cache_corruption_recovery": frozenset({
        "major_corruption_detection_s", "significant_corruption_detected", "minor_corruption_detected",
        "fallback_failed_requests_count", "cache_rebuilt_ok", "cache_rebuild_s", "integrity_verified_before_use_ok",
        "clean_model_corruption_detected",
    }),
    "model.vram_corruption_recovery": frozenset({
        "vram_corruption_detection_s", "other_model_request_error", "served_from_corrupted_count",
        "reloaded_from_clean_cache_ok", "reload_s", "resumed_without_verification_count",
    }),
    "processing.worker_crash_recovery": frozenset({
        "crash_detection_s", "worker_restart_s", "session_state_restored_ok", "partial_results_lost_count",
        "lost_requests_count", "leaked_resource_count",
    }),
    "processing.session_state_corruption": frozenset({
        "operation_on_corrupt_state_count", "state_corruption_detected", "state_corruption_detection_s",
        "state_restored_consistent_ok", "state_recovery_s",
    }),
    "inference.execution_timeout": frozenset({
        "timeout_detection_delay_s", "premature_timeout_error", "leaked_resource_count", "orphan_operation_count",
        "timeout_notification_ok", "reduced_retry_ok",
    }),
    "inference.batch_timeout_recovery": frozenset({
        "completed_items_lost_count", "restart_from_last_completed_ok", "items_reprocessed_count",
        "leaked_resource_count", "orphan_batch_item_count", "timeout_detection_delay_s",
    }),
    "postprocessing.safety_validation_failure": frozenset({
        "conservative_fallback_ok", "escalated_to_manual_review_ok", "outside_failure_scope_error",
        "failure_detection_s",
    }),
    "postprocessing.enhancement_failure_recovery": frozenset({
        "output_validated_ok", "invalid_output_delivered_error", "fallback_psnr_gain_db", "limitation_reported_ok",
        "lost_requests_count",
    }),
}
