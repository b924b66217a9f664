"""IOCM rejection notes and the replacement manifest."""

from __future__ import annotations

import pytest
from pydicom.dataset import Dataset

from drimbox.adapters.documents.iocm import (
    INCORRECT_WORKLIST_ENTRY,
    REJECTED_FOR_QUALITY,
    REJECTION_REASONS,
    rejected_instances,
    rejection_reason,
)
from drimbox.adapters.documents.kos import KOS_SOP_CLASS, build_kos, parse_kos
from drimbox.domain.errors import InvalidInput
from drimbox.domain.manifest import Code, without_instances
from tests.unit.test_kos import CT, sample_manifest


def rejection_note(reason: Code, sops: list[str], in_content: bool = True) -> Dataset:
    ds = Dataset()
    ds.SOPClassUID = KOS_SOP_CLASS
    title = Dataset()
    title.CodeValue, title.CodingSchemeDesignator, title.CodeMeaning = (
        reason.value,
        reason.scheme,
        reason.meaning,
    )
    ds.ConceptNameCodeSequence = [title]
    refs = []
    for sop in sops:
        ref = Dataset()
        ref.ReferencedSOPClassUID, ref.ReferencedSOPInstanceUID = CT, sop
        refs.append(ref)
    series = Dataset()
    series.SeriesInstanceUID = "1.2.3.4"
    series.ReferencedSOPSequence = refs
    study = Dataset()
    study.StudyInstanceUID = "1.2.3"
    study.ReferencedSeriesSequence = [series]
    ds.CurrentRequestedProcedureEvidenceSequence = [study]
    if in_content:
        items = []
        for ref in refs:
            item = Dataset()
            item.RelationshipType, item.ValueType = "CONTAINS", "IMAGE"
            item.ReferencedSOPSequence = [ref]
            items.append(item)
        ds.ContentSequence = items
    return ds


@pytest.mark.parametrize("code", sorted(REJECTION_REASONS))
def test_every_cid_7011_reason_is_a_rejection(code: str) -> None:
    note = rejection_note(REJECTION_REASONS[code], ["1.2.3.4.1", "1.2.3.4.2"])
    assert rejection_reason(note) == REJECTION_REASONS[code]
    assert rejected_instances(note) == {"1.2.3.4.1", "1.2.3.4.2"}


def test_evidence_only_note_is_heeded() -> None:
    note = rejection_note(INCORRECT_WORKLIST_ENTRY, ["1.2.3.4.9"], in_content=False)
    assert rejected_instances(note) == {"1.2.3.4.9"}


def test_a_manifest_is_not_a_rejection_note() -> None:
    manifest_ds = build_kos(sample_manifest())
    assert rejection_reason(manifest_ds) is None
    with pytest.raises(InvalidInput, match="rejection note"):
        rejected_instances(manifest_ds)
    other_scheme = rejection_note(Code("113001", "99LOCAL", "x"), ["1.2.3"])
    assert rejection_reason(other_scheme) is None


def test_without_instances_gives_a_new_manifest() -> None:
    manifest = sample_manifest(series_count=2, per_series=2)
    first, second = manifest.series
    gone = {i.sop_instance_uid for i in first.instances} | {second.instances[0].sop_instance_uid}
    note = rejection_note(REJECTED_FOR_QUALITY, sorted(gone))
    new = without_instances(manifest, rejected_instances(note))
    assert new.sop_instance_uid != manifest.sop_instance_uid
    assert new.series_instance_uid == manifest.series_instance_uid
    assert new.instance_number == 2
    assert [s.series_uid for s in new.series] == [second.series_uid]
    assert new.sop_instance_uids == manifest.sop_instance_uids - gone
    assert not new.is_empty
    # it is publishable as is, and reads back the same
    assert parse_kos(build_kos(new)).sop_instance_uids == new.sop_instance_uids


def test_rejecting_everything_empties_the_manifest() -> None:
    manifest = sample_manifest()
    new = without_instances(manifest, manifest.sop_instance_uids, new_sop_uid="2.25.1")
    assert new.is_empty and new.series == () and new.sop_instance_uid == "2.25.1"
    assert without_instances(manifest, []).sop_instance_uids == manifest.sop_instance_uids
