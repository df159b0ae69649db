"""Column names of the per-frame tables that flow between stages, named once, here.

Every table is one row per frame, keyed by ``FILE`` (the file name, not a path), written as CSV.
"""

FILE = "file"
FILTER = "filter"
EXPTIME = "exptime"
# position of the measured star in the (pre-shifted) frame, pixels, x first
X = "x"
Y = "y"
# estimated shift onto the reference (seed convention: reference - frame), floats
DX = "dx"
DY = "dy"
SIGMA_DX = "sigma_dx"
SIGMA_DY = "sigma_dy"
N_STARS = "n_stars"
METHOD = "method"
# pre-shift applied before measuring (integers)
PRE_DX = "pre_dx"
PRE_DY = "pre_dy"
# shift actually applied to the raw frame (pre-shift included)
APPLIED_DX = "applied_dx"
APPLIED_DY = "applied_dy"
# star position re-measured after shifting, minus its reference position ("new shift")
RESIDUAL_DX = "residual_dx"
RESIDUAL_DY = "residual_dy"
BKGSUB = "bkgsub"
# star shapes in the aligned frame (median over the reference's isolated stars)
FWHM = "fwhm"
ELONGATION = "elongation"
STATUS = "status"
REASON = "reason"
# 1 when the frame was turned by 180 deg before shifting (a meridian flip)
FLIP = "flip"
# 1 for the night's reference frame (shifts table)
REFERENCE = "reference"
# why the new shift could not be measured after shifting ('' when it could)
REMEASURE = "remeasure"
# truth (sample nights only)
TRUE_DX = "true_dx"
TRUE_DY = "true_dy"
BAD = "bad"
KIND = "kind"

# status values
KEPT = "kept"
REJECTED = "rejected"
FAILED = "failed"
STATUSES = (KEPT, REJECTED, FAILED)


# per-frame quality metrics (starshift.quality): stars matched with the reference, fitted
# geometry, photometry and sky of each frame
N_MATCHED = "n_matched"                # reference stars found in the frame
MATCHED_FRACTION = "matched_fraction"  # n_matched / reference stars expected inside the frame
TRANSPARENCY = "transparency"          # clipped median flux / ref_flux of the matched stars
SKY = "sky"                            # sky level (clipped median), data units
SKY_NOISE = "sky_noise"                # sky noise (MAD sigma), data units
ROTATION = "rotation"                  # fitted frame -> reference rotation, deg (+x towards +y)
SCALE = "scale"                        # fitted frame -> reference scale
FIT_RMS = "fit_rms"                    # rms residual of that fit, px
CORNER_SHIFT = "corner_shift"          # largest misalignment the pure shift leaves, px
QUALITY = [N_MATCHED, MATCHED_FRACTION, TRANSPARENCY, SKY, SKY_NOISE, ROTATION, SCALE, FIT_RMS,
           CORNER_SHIFT]

#: the shifts table (the measure step): one row per frame
SHIFTS = [
    FILE, FILTER, EXPTIME, REFERENCE, METHOD, X, Y, DX, DY, SIGMA_DX, SIGMA_DY, N_STARS, FLIP,
    PRE_DX, PRE_DY, FWHM, ELONGATION, *QUALITY, STATUS, REASON,
]
#: the diagnostics table (after shifting and the night's rules)
DIAGNOSTICS = [
    FILE, FILTER, EXPTIME, METHOD, X, Y, DX, DY, SIGMA_DX, SIGMA_DY, N_STARS, FLIP, PRE_DX, PRE_DY,
    APPLIED_DX, APPLIED_DY, RESIDUAL_DX, RESIDUAL_DY, BKGSUB, FWHM, ELONGATION, *QUALITY, STATUS,
    REASON,
]
