"""Planned runners of Part 2 (stress tests, spec sections 2.1 to 2.6): the contract for the engineers who write them.

device.rapid_enumeration: open-loop discover_devices requests at request_rate_rps against simulated_devices simulated
    devices, one phase of phase_duration_s per device_complexity; records each discovery's host-side latency and a 0/1
    discovery_error (error, timeout, or a device list that differs from the simulated set), per-process RSS growth per
    phase, and system-wide CPU every second.
device.hot_swap: adds and removes simulated devices at changes_per_min for duration_s in change_pattern (random_changes:
    Poisson arrivals; synchronized_changes: evenly spaced ticks, each adding one device and removing another;
    burst_changes: each minute's changes at one instant); records per change whether the worker reported it, per removal
    the resources still bound to the removed device, and crashes.
memory.sustained_pressure: holds memory_pool (device_total: the device's memory; worker_budget: memory_pool_mb) at
    target_utilization_pct with allocation_pattern for duration_s, labelling samples by checkpoint; records every
    collection cycle's pause and recovered/released bytes, allocator fragmentation every second, allocation latency and
    failures, and the utilisation reached (ERROR, not a verdict, if the target is never reached).
memory.thrashing: allocates and frees objects of random size (object_size_min_kb to object_size_max_mb) at ops_per_s in
    the worker for duration_s while sending echo probes through the work queue at probe_rate_rps; records probe latency,
    crashes, hangs, and the time from the end of thrashing until memory and probe latency are back at their
    pre-thrashing levels.
model.concurrent_loading: per round and per target_devices configuration the testbed has, loads concurrent_model_count
    generated models together (model_sizes_gb, or model_sizes_mb in smoke, and model_types in rotation) and then the
    same models one after another from uncached copies; records each load's time and errors, the round's makespan, the
    peak number of loads in flight, weight bytes over device memory held, the concurrent/sequential read-rate ratio, and
    CPU every second while loading.
model.rapid_switching: switches the served model every switch_interval_s for duration_s over model_pool_size generated
    models (sizes and types in rotation as in model.concurrent_loading) by switching_pattern (random: uniform; cyclic:
    fixed order; popularity_based: probability proportional to 1/rank); records each switch's latency, cache hit, and
    the worker's memory beyond its resident models' bytes relative to the first switch (allocator accounting, not RSS).
processing.queue_overflow: calibrates service times alone, then injects requests of request_complexity at each of
    injection_rates_rps for step_duration_s into a queue of queue_capacity, alternating high and normal priority, and
    lets the queue drain after each step; records per request lost/rejected/completed, each rejection's well-formedness,
    priority inversions, queue normalisation per overflowing step, the RSS high-water growth within a step, and response
    time over its queue-position bound.
processing.burst_load: holds baseline_rps, then bursts to burst_magnitude_x times it for each of burst_durations_s, one
    burst every burst_interval_s, with requests repeating (input, seed) pairs recorded at baseline; records per burst
    the time to the first automatic capacity change and the time back to pre-burst queue depth and p90 latency, and per
    burst request whether its output differs from the baseline one.
inference.throughput_ramp: one worker per device, evenly spaced text_to_image requests at each of scaling_steps_per_min
    for step_duration_s, stopping after the first step a device cannot sustain; records per device the completion rate
    at its highest sustained step, and per output 1 - SSIM against the same (prompt, seed) at the first step.
inference.sustained_throughput: closed loop keeping every device busy with text_to_image for duration_s; records
    completions per device per window_s (normalised to per minute), every failed inference, worker crashes, and per
    output 1 - SSIM against the same (prompt, seed) rendered alone before the run.
inference.mixed_types: closed loop with concurrency requests in flight drawn from inference_mix and uniformly from
    resolutions, step_counts and batch_sizes for duration_s; records per-type latency and throughput, failures, crashes,
    and per output 1 - SSIM against the same request rendered alone before the run.
postprocessing.high_volume: open-loop items at input_rate_per_min for duration_s, postprocessing_types in rotation and
    simple/complex images alternating; records each item's arrival-to-output latency, whether its output differs from
    the same input processed alone before the run, and GPU utilisation per 1-minute window over busy time (SKIPPED
    without a GPU).
postprocessing.safety_validation_load: open-loop safety validations at validations_per_min for duration_s over a
    labelled corpus of safe, borderline and mixed content; records per validation whether the verdict matches the label,
    its latency and errors.
"""

from __future__ import annotations

PLANNED: dict[str, frozenset[str]] = {
    "device.rapid_enumeration": frozenset({
        "discovery_latency_s", "discovery_error", "memory_growth_ratio", "cpu_utilization_ratio",
        "worker_rss_mb", "achieved_rate_rps", "discovered_device_count",
    }),
    "device.hot_swap": frozenset({
        "change_detected", "change_detection_latency_s", "leaked_resource_count", "worker_crash_count",
        "change_count",
    }),
    "memory.sustained_pressure": frozenset({
        "gc_pause_s", "gc_recovery_ratio", "gc_cycles_per_min", "fragmentation_ratio", "allocation_latency_s",
        "allocation_error", "memory_utilization_ratio", "worker_crash_count",
    }),
    "memory.thrashing": frozenset({
        "response_time_s", "worker_crash_count", "worker_hang_count", "recovery_s", "allocation_error",
        "achieved_ops_rps", "worker_rss_mb",
    }),
    "model.concurrent_loading": frozenset({
        "model_load_s", "load_makespan_s", "load_error", "peak_concurrent_loads_count", "memory_efficiency_ratio",
        "concurrent_over_sequential_bandwidth_ratio", "cpu_utilization_ratio", "bytes_read_mb",
    }),
    "model.rapid_switching": frozenset({
        "switch_latency_s", "switch_error", "cache_hit_ok", "memory_growth_mb", "worker_rss_mb",
    }),
    "processing.queue_overflow": frozenset({
        "request_lost_error", "rejection_malformed_error", "priority_inversion_count", "queue_normalized_ok",
        "memory_high_water_growth_mb", "response_time_over_queue_bound_ratio", "response_time_s",
        "queue_depth_count", "rejected_count", "service_time_s",
    }),
    "processing.burst_load": frozenset({
        "scaling_response_s", "baseline_recovery_s", "output_mismatch_error", "response_time_s",
        "request_lost_error", "queue_depth_count",
    }),
    "inference.throughput_ramp": frozenset({
        "max_sustainable_throughput_per_min", "achieved_throughput_per_min", "quality_degradation_ratio",
        "inference_latency_s", "inference_error",
    }),
    "inference.sustained_throughput": frozenset({
        "throughput_per_device_per_min", "inference_error", "worker_crash_count", "quality_degradation_ratio",
        "inference_latency_s",
    }),
    "inference.mixed_types": frozenset({
        "quality_degradation_ratio", "inference_error", "worker_crash_count", "inference_latency_s",
        "throughput_per_min",
    }),
    "postprocessing.high_volume": frozenset({
        "item_latency_s", "output_mismatch_error", "gpu_utilization_ratio", "item_error", "throughput_per_min",
    }),
    "postprocessing.safety_validation_load": frozenset({
        "safety_verdict_correct_ok", "validation_latency_s", "validation_error",
    }),
}
