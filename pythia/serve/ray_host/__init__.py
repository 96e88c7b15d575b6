"""Pythia on Ray Serve: the multi-replica host.

An OpenAI-compatible ingress (:mod:`.ingress`) reads each call's annotation and sends it to
the deployment of its model pool; each replica of a pool supervises one vLLM OpenAI server
with the Pythia scheduler plugin (:mod:`.replica`, launched by
:func:`pythia.serve.engines.build_launch` as ``pythia run`` launches it); a
``RequestRouter`` subclass (:mod:`.router`) hosts the system's router policy and a custom
autoscaling policy (:mod:`.autoscale`) its autoscaler, both through one workflow-state actor
(:mod:`.state`) that owns the run's predictor. :mod:`.app` builds and deploys the
application and tears it down. Only :mod:`.app`, :mod:`.ingress`, :mod:`.replica`,
:mod:`.router` and :mod:`.autoscale` import Ray; :mod:`.config`, :mod:`.views`,
:mod:`.state` and :mod:`.engine_metrics` are plain Python, tested without it.
"""
