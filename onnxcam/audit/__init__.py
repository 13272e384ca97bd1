"""Deployment-side audits: faithfulness/localisation metrics per image and method, the cascading
randomisation sanity check, model-vs-model explanation comparison, and self-contained HTML reports."""
