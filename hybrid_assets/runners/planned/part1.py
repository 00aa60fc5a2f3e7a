"""Planned runners of Part 1 (workflows, spec sections 1.1 to 1.6): the contract for whoever writes them.

The cases are in hybrid_assets/catalog/cases/part1_workflows.yaml; what each judged metric means (what one sample
is, what makes a 0/1 indicator 1) is in the `why` of the lines that judge it. Shared params: `model` / `model_set` /
`model_graph` is `tiny` (runs in milliseconds on a CPU), `small` or `full` (the deployment's own models);
`simulated_devices: N` adds simulated devices where the testbed has fewer than two real ones (0: real devices only);
`time_scale` multiplies the durations of the 1.4 simulations, never a line's bound. Output comparisons are bitwise,
in deterministic mode, against the same request run alone or in a clean worker on the same device kind.

device.hot_swap_detection: plug simulated devices into a running worker under a closed-loop background load; record
    each device's time to appear in the system's device list, every background request's failure, and whether the
    new device serves work.
memory.device_pool_allocation: have the system allocate a pool per device (a simulated second device where the
    testbed has only one), run a model load and inference requests in the pools; record pool success, efficiency (live
    bytes / reserved), fragmentation (1 - largest free block / free) and allocations refused while another device
    had room.
model.device_aware_placement: ask the system to assess and place a model set on the devices; record each (model,
    device) verdict against the host's own ground truth (footprint vs free memory, dtype support) and each placement
    on an unsuitable device.
inference.multi_device_coordination: run inference distributed across every device; record request failures, whether
    every device took part in each run, and bit-level output mismatches between devices of the same kind for the
    same input and seed.
cross_domain.device_to_inference_pipeline: run the complete workflow (discovery, pool allocation, placement and
    load, inference) on a worker reset to nothing, then a request stream through the assembled pipeline; record
    workflow latency, per-domain utilization (used / held), request failures and host-worker state mismatches.
model.dependency_aware_loading: load model graphs with declared dependencies (text encoder, VAE, base of a LoRA or
    ControlNet); record graph errors against the manifests, order violations (a model before its dependency, a
    shared dependency twice) and models failing a probe inference after loading.
model.cache_coherency: cycle models through the host RAM cache and the worker's device memory (load, transfer,
    evict, reload, concurrent access); record cache population and transfer sync by checksum, host-vs-worker
    state-table mismatches after every operation, and transfer time.
inference.load_to_inference_transition: send inference the moment a load is reported complete; record requests
    refused, failed or causing further load/transfer/compile work, and outputs differing from a clean worker's
    reference (same model, input, seed, device kind, deterministic mode).
postprocessing.inference_handoff: hand inference outputs to postprocessing (2x upscaling enhancement, then safety
    validation); record copies made in the handoff, checksum changes, enhancement or validation failures, and PSNR
    gain over bicubic after downscale-and-enhance.
processing.batch_preparation: prepare batches of the case's size for every concurrent_batches level and inference
    type; record each batch's time from its first request built to the whole batch queued.
processing.concurrent_batch_scheduling: run the case's number of concurrent batches with distinct priorities plus
    high-priority probes; per dispatch decision record priority inversions and devices left idle while a runnable
    item waited, and per batch whether it was starved by a later batch of equal or lower priority.
inference.multi_model_concurrent: run concurrent requests over every model of one inference type at increasing
    concurrency; record failures from conflicts, devices idle while requests waited, and outputs differing from the
    same request run alone.
processing.batch_aggregation: run batches over the batch size and concurrency grid, collect and aggregate results;
    record per batch the results lost or duplicated and aggregate fields disagreeing with the per-item results.
processing.batch_workflow: run 5 and 10 concurrent batches over the batch-size grid until at least min_items items;
    record throughput per run (images per minute), batches admitted together, mean GPU utilization per run (NVML;
    skipped without CUDA) and every item's failure.
memory.gradual_pressure: raise memory usage with a balloon from initial_usage at increase_rate_per_min to
    maximum_pressure and hold it (durations x time_scale) while probes run, then release; record the responses at
    75/85/95% (cleanup, stabilization, latency impact, degraded mode, notification, emergency recovery, stability,
    critical requests) and, over the whole episode, interactive latency, recovery time and status communication.
memory.pressure_spike: from baseline_usage, raise usage by spike_increase within spike_rise_s, hold
    spike_duration_s, release and watch recovery_time_s (durations x time_scale) while probes run; record response
    time and actions per spike, out-of-memory failures, stability, and the same episode metrics as
    memory.gradual_pressure.
cross_domain.cascade_failure_recovery: inject initial_failure under load (primary device failure: a device and its
    worker killed; model corruption: the loaded model's weights corrupted) and follow the cascade; record detection,
    recovery start and full recovery times, fallback activation time and user-visible request failures.
cross_domain.communication_failure_recovery: break the host-worker stdin/stdout pipe with requests in flight, or
    inject corrupted JSON messages in either direction; record detection and re-establishment times, requests
    lost/duplicated/misanswered, corrupted messages acted on, and resynchronisation success.
cross_domain.multi_user_inference: run concurrent_users closed-loop users over operations_per_user and
    operation_types, with a single-user baseline; record conflict failures, outputs differing from the single-user
    output, latency increase at 50 users and throughput scaling efficiency up to 25 users.
cross_domain.mixed_operation_concurrency: run the spec's operation mix (inference 40%, model loading 30%,
    postprocessing 20%, maintenance 10%) with priorities across concurrent users; record interference with an
    isolated run, conflict failures, devices idle while work waited, and priority inversions.
"""

from __future__ import annotations

PLANNED: dict[str, frozenset[str]] = {
    "device.hot_swap_detection": frozenset({
        "hot_swap_detection_s", "integration_request_error", "new_device_serving_ok", "background_request_latency_s",
    }),
    "memory.device_pool_allocation": frozenset({
        "pool_allocation_ok", "allocation_efficiency_ratio", "fragmentation_ratio", "misplaced_allocation_detected",
        "allocation_latency_s",
    }),
    "model.device_aware_placement": frozenset({
        "compatibility_assessment_error", "unsuitable_placement_detected", "placement_time_s",
    }),
    "inference.multi_device_coordination": frozenset({
        "distributed_request_error", "device_participation_ok", "cross_device_output_mismatch_detected",
        "distributed_request_latency_s",
    }),
    "cross_domain.device_to_inference_pipeline": frozenset({
        "pipeline_latency_s", "domain_resource_utilization_ratio", "pipeline_request_error",
        "cross_domain_state_mismatch_detected", "stage_latency_s",
    }),
    "model.dependency_aware_loading": frozenset({
        "dependency_graph_error_count", "loading_order_violation_count", "model_ready_ok", "load_time_s",
    }),
    "model.cache_coherency": frozenset({
        "ram_cache_population_ok", "vram_load_sync_ok", "cache_vram_state_mismatch_detected", "cache_to_vram_sync_s",
    }),
    "inference.load_to_inference_transition": frozenset({
        "first_inference_not_ready_detected", "output_mismatch_detected", "first_inference_latency_s",
    }),
    "postprocessing.inference_handoff": frozenset({
        "handoff_copy_detected", "handoff_checksum_mismatch_detected", "postprocessing_error", "upscaling_psnr_gain_db",
        "handoff_latency_s",
    }),
    "processing.batch_preparation": frozenset({
        "batch_preparation_s",
    }),
    "processing.concurrent_batch_scheduling": frozenset({
        "priority_inversion_detected", "idle_device_while_queued_detected", "batch_starved_detected",
        "batch_completion_s",
    }),
    "inference.multi_model_concurrent": frozenset({
        "concurrent_request_error", "idle_device_while_queued_detected", "output_mismatch_detected",
        "request_latency_s",
    }),
    "processing.batch_aggregation": frozenset({
        "batch_results_lost_count", "aggregation_error_count",
    }),
    "processing.batch_workflow": frozenset({
        "batch_throughput_per_min", "concurrent_batches_admitted_count", "gpu_utilization_ratio", "batch_item_error",
    }),
    "memory.gradual_pressure": frozenset({
        "cache_cleanup_detected", "own_memory_above_pre_cleanup_detected", "performance_impact_ratio",
        "degraded_mode_activated_detected", "degraded_request_unhandled_error", "degradation_notification_ok",
        "emergency_recovery_detected", "worker_crash_or_hang_detected", "critical_request_error",
        "interactive_request_latency_s", "full_recovery_s", "status_communication_missing_detected",
        "memory_usage_ratio",
    }),
    "memory.pressure_spike": frozenset({
        "spike_response_s", "spike_cleanup_and_load_reduction_detected", "spike_oom_error",
        "worker_crash_or_hang_detected", "critical_request_error", "interactive_request_latency_s", "full_recovery_s",
        "status_communication_missing_detected", "memory_usage_ratio",
    }),
    "cross_domain.cascade_failure_recovery": frozenset({
        "cascade_detection_s", "recovery_initiation_s", "cascade_full_recovery_s", "fallback_activation_s",
        "user_request_error",
    }),
    "cross_domain.communication_failure_recovery": frozenset({
        "pipe_break_detection_s", "pipe_reestablishment_s", "request_lost_count",
        "corrupted_message_accepted_detected", "protocol_fallback_ok",
    }),
    "cross_domain.multi_user_inference": frozenset({
        "resource_conflict_error", "output_mismatch_detected", "latency_increase_at_50_users_ratio",
        "throughput_scaling_efficiency_ratio", "request_latency_s", "throughput_per_min",
    }),
    "cross_domain.mixed_operation_concurrency": frozenset({
        "cross_operation_interference_detected", "resource_conflict_error", "idle_device_while_queued_detected",
        "priority_inversion_detected", "operation_latency_s",
    }),
}
