"""Write a Trivy JSON vulnerability report and a CycloneDX SBOM for an
image digest, as the scanners would, for relayctl's supply-chain gates in
scripts/test.sh (made here, never downloaded).

    python3 scripts/supply-chain-fixtures.py <sha256:digest> <dir> <severity>

The report has one finding of <severity> (CVE-2024-0001 in openssl).
Files: <dir>/<hex>.vulnerabilities.json and <dir>/<hex>.sbom.json.
"""
import json
import os
import sys

digest, out, severity = sys.argv[1], sys.argv[2], sys.argv[3]
hexpart = digest.split(":", 1)[1]
report = {
    "SchemaVersion": 2,
    "ArtifactName": "shop/web@" + digest,
    "ArtifactType": "container_image",
    "Metadata": {"RepoDigests": ["shop/web@" + digest]},
    "Results": [{
        "Target": "shop/web (debian 12.5)",
        "Class": "os-pkgs",
        "Vulnerabilities": [{
            "VulnerabilityID": "CVE-2024-0001",
            "PkgName": "openssl",
            "InstalledVersion": "3.0.11",
            "FixedVersion": "3.0.13",
            "Severity": severity,
        }],
    }],
}
sbom = {
    "bomFormat": "CycloneDX",
    "specVersion": "1.5",
    "version": 1,
    "metadata": {"component": {
        "type": "container",
        "name": "shop/web",
        "purl": "pkg:oci/web@sha256%3A" + hexpart,
    }},
    "components": [{"type": "library", "name": "openssl", "version": "3.0.11"}],
}
for kind, doc in (("vulnerabilities", report), ("sbom", sbom)):
    with open(os.path.join(out, hexpart + "." + kind + ".json"), "w") as f:
        json.dump(doc, f)
