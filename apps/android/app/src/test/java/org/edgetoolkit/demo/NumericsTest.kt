package org.edgetoolkit.demo

import org.edgetoolkit.demo.runtime.LatencyStats
import org.edgetoolkit.demo.runtime.Numerics
import org.junit.Assert.assertArrayEquals
import org.junit.Assert.assertEquals
import org.junit.Test

/** The app's formulas against values worked out by hand (or with numpy, noted). */
class NumericsTest {
    @Test
    fun softmaxOfTwoLogits() {
        // softmax([0, ln 3]) = [1/4, 3/4]
        val p = Numerics.softmax(floatArrayOf(0f, kotlin.math.ln(3f)))
        assertArrayEquals(floatArrayOf(0.25f, 0.75f), p, 1e-6f)
    }

    @Test
    fun softmaxDoesNotOverflow() {
        val p = Numerics.softmax(floatArrayOf(1000f, 1000f))
        assertArrayEquals(floatArrayOf(0.5f, 0.5f), p, 1e-6f)
    }

    @Test
    fun percentileInterpolatesLikeNumpy() {
        // numpy.percentile([1, 2, 3, 4], 90) = 3.7; 50 -> 2.5
        val v = doubleArrayOf(4.0, 1.0, 3.0, 2.0)
        assertEquals(3.7, Numerics.percentile(v, 90.0), 1e-12)
        assertEquals(2.5, Numerics.percentile(v, 50.0), 1e-12)
    }

    @Test
    fun latencyStatsUseSampleStd() {
        // [1, 2, 3, 4]: mean 2.5, sample std sqrt(5/3)
        val s = LatencyStats.of(doubleArrayOf(1.0, 2.0, 3.0, 4.0))
        assertEquals(2.5, s.meanMs, 1e-12)
        assertEquals(kotlin.math.sqrt(5.0 / 3.0), s.stdMs, 1e-12)
    }

    @Test
    fun int8RoundTripRoundsHalfToEven() {
        // scale 0.5, zero point -3: 1.25 / 0.5 = 2.5 -> 2 (even), 1.75 / 0.5 = 3.5 -> 4;
        // 1000 clips to 127
        val q = Numerics.quantizeInt8(floatArrayOf(1.25f, 1.75f, 1000f), 0.5f, -3)
        assertArrayEquals(byteArrayOf(-1, 1, 127), q)
        assertArrayEquals(floatArrayOf(1f, 2f, 65f), Numerics.dequantizeInt8(q, 0.5f, -3), 0f)
    }

    @Test
    fun relativeErrorIsScaledByTheLargestReference() {
        val e = Numerics.relativeError(floatArrayOf(1f, 2.1f), floatArrayOf(1f, 2f), "max")
        assertEquals(0.05, e, 1e-6)
    }
}
